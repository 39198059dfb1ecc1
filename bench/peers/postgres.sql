-- postgres.sql — the PostgreSQL peer: points-v1 as one plpgsql function
-- call per operation, run by pgbench (postgres.pgbench) with
-- synchronous_commit on, so every call is its own durable transaction.
--
-- Per write, the same work as tally's: the idempotency lookup (entries'
-- primary key), the balance read and update, the entry, which the history
-- index (merchant, account, seq) also covers; a short redeem is refused
-- and the refusal remembered under its id.

CREATE TABLE accounts (
    merchant  bigint NOT NULL,
    account   bigint NOT NULL,
    available bigint NOT NULL DEFAULT 0,
    held      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant, account)
);

CREATE TABLE entries (
    merchant bigint NOT NULL,
    id       text NOT NULL,
    kind     text NOT NULL,
    account  bigint NOT NULL,
    points   bigint NOT NULL,
    balance  bigint NOT NULL,
    ts       timestamptz NOT NULL DEFAULT now(),
    seq      bigserial,
    PRIMARY KEY (merchant, id)
);
CREATE INDEX entries_history ON entries (merchant, account, seq);

-- Returns the balance after the earn (or after the first one, on a retry).
CREATE FUNCTION points_earn(m bigint, a bigint, p bigint, eid text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    bal bigint;
BEGIN
    SELECT balance INTO bal FROM entries WHERE merchant = m AND id = eid;
    IF FOUND THEN
        RETURN bal;
    END IF;
    INSERT INTO accounts AS x (merchant, account, available) VALUES (m, a, p)
        ON CONFLICT (merchant, account) DO UPDATE SET available = x.available + excluded.available
        RETURNING x.available INTO bal;
    INSERT INTO entries (merchant, id, kind, account, points, balance)
        VALUES (m, eid, 'earn', a, p, bal);
    RETURN bal;
END
$$;

-- Returns the balance after the redeem, or -1 when refused (remembered).
CREATE FUNCTION points_redeem(m bigint, a bigint, p bigint, eid text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    bal bigint;
    k text;
BEGIN
    SELECT balance, kind INTO bal, k FROM entries WHERE merchant = m AND id = eid;
    IF FOUND THEN
        RETURN CASE WHEN k = 'refused' THEN -1 ELSE bal END;
    END IF;
    SELECT available INTO bal FROM accounts WHERE merchant = m AND account = a FOR UPDATE;
    IF NOT FOUND OR bal < p THEN
        INSERT INTO entries (merchant, id, kind, account, points, balance)
            VALUES (m, eid, 'refused', a, 0, coalesce(bal, 0));
        RETURN -1;
    END IF;
    UPDATE accounts SET available = available - p WHERE merchant = m AND account = a
        RETURNING available INTO bal;
    INSERT INTO entries (merchant, id, kind, account, points, balance)
        VALUES (m, eid, 'redeem', a, -p, bal);
    RETURN bal;
END
$$;
