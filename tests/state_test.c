/*
 * state_test.c — engine/state.c against a reference model: random puts,
 * deletes, gets and cursor walks (forward, backward, from random seeks,
 * from the last key) over layers and LMDB, with synchronous and
 * asynchronous commits and aborts at random moments.  The model is a
 * sorted array per table, with a copy kept at the last commit so that an
 * abort can be checked.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_util.h"
#include "state.h"

/* ---- the model ----------------------------------------------------------- */

#define KEYS 300 /* per table: small, so that keys repeat and collide */
#define TABLES 3 /* of the state's tables, the first three after meta */

typedef struct model {
    bool present[TABLES][KEYS];
    uint8_t val[TABLES][KEYS][40];
    uint8_t val_len[TABLES][KEYS];
} model;

/* Keys sort like their index: big-endian, with a varying length tail so
 * that keys of different lengths interleave. */
static size_t key_of(int k, uint8_t *out)
{
    out[0] = (uint8_t)(k >> 8);
    out[1] = (uint8_t)k;
    size_t tail = (size_t)(k % 3);
    memset(out + 2, 0xAB, tail);
    return 2 + tail;
}

static int table_of(int t) { return 1 + t; }

static void check_get(state *s, const model *m, int t, int k)
{
    uint8_t key[8];
    size_t kl = key_of(k, key);
    const void *v;
    size_t vl;
    int rc = state_get(s, table_of(t), key, kl, &v, &vl);
    cr_assert_geq(rc, 0, "get failed: %d", rc);
    if (!m->present[t][k]) {
        cr_assert_eq(rc, 1, "table %d key %d should be absent", t, k);
        return;
    }
    cr_assert_eq(rc, 0, "table %d key %d should be present", t, k);
    cr_assert_eq(vl, m->val_len[t][k]);
    cr_assert(memcmp(v, m->val[t][k], vl) == 0, "table %d key %d value", t, k);
}

/* The model's next present key from k in direction dir, or -1. */
static int model_next(const model *m, int t, int k, int dir)
{
    for (; k >= 0 && k < KEYS; k += dir)
        if (m->present[t][k])
            return k;
    return -1;
}

static int key_index(const void *key, size_t kl)
{
    const uint8_t *b = key;
    cr_assert_geq(kl, 2);
    return b[0] << 8 | b[1];
}

/* A walk of up to `steps` entries from a seek (or the last key) in a
 * direction, against the model. */
static void check_walk(state *s, const model *m, int t, int from, int dir, int steps,
                       bool from_last)
{
    state_cursor *c;
    cr_assert_eq(state_cursor_open(s, table_of(t), &c), 0);
    const void *k, *v;
    size_t kl, vl;
    int rc, want;
    if (from_last) {
        rc = state_cursor_last(c, &k, &kl, &v, &vl);
        want = model_next(m, t, KEYS - 1, -1);
    } else {
        uint8_t key[8];
        size_t n = key_of(from, key);
        rc = state_cursor_seek(c, key, n, &k, &kl, &v, &vl);
        want = model_next(m, t, from, 1);
    }
    for (int i = 0; i < steps; i++) {
        cr_assert_geq(rc, 0);
        if (want < 0) {
            cr_assert_eq(rc, 1, "table %d: walk should end (step %d)", t, i);
            break;
        }
        cr_assert_eq(rc, 0, "table %d: walk ended early, want key %d", t, want);
        cr_assert_eq(key_index(k, kl), want, "table %d step %d: got key %d want %d", t, i,
                     key_index(k, kl), want);
        cr_assert_eq(vl, m->val_len[t][want]);
        cr_assert(memcmp(v, m->val[t][want], vl) == 0);
        rc = state_cursor_step(c, dir, &k, &kl, &v, &vl);
        want = model_next(m, t, want + dir, dir);
    }
    state_cursor_close(c);
}

/* ---- the test ----------------------------------------------------------------- */

static void nothing(void *ctx) { (void)ctx; }

Test(state, random_operations_over_layers_and_lmdb_match_a_model, .timeout = 240)
{
    char dir[64];
    eu_tmpdir(dir, "state");
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    static model live, committed, frozen_view;
    memset(&live, 0, sizeof(live));
    memset(&committed, 0, sizeof(committed));
    bool committing = false, has_frozen = false;
    unsigned seed = 12345;
    for (int op = 0; op < 60000; op++) {
        int t = rand_r(&seed) % TABLES, k = rand_r(&seed) % KEYS;
        int what = rand_r(&seed) % 1000;
        uint8_t key[8];
        size_t kl = key_of(k, key);
        if (what < 450) { /* put */
            uint8_t val[40];
            size_t vl = (size_t)(rand_r(&seed) % 40);
            for (size_t i = 0; i < vl; i++)
                val[i] = (uint8_t)rand_r(&seed);
            cr_assert_eq(state_put(s, table_of(t), key, kl, val, vl), 0);
            live.present[t][k] = true;
            memcpy(live.val[t][k], val, vl);
            live.val_len[t][k] = (uint8_t)vl;
        } else if (what < 650) { /* delete */
            int rc = state_del(s, table_of(t), key, kl);
            cr_assert_eq(rc, live.present[t][k] ? 0 : 1, "del of key %d", k);
            live.present[t][k] = false;
        } else if (what < 850) {
            check_get(s, &live, t, k);
        } else if (what < 960) {
            int way = rand_r(&seed) % 2 ? 1 : -1;
            check_walk(s, &live, t, k, way, 1 + rand_r(&seed) % 40, way < 0 && what % 2);
        } else if (what < 975) { /* an asynchronous checkpoint, step by step */
            if (!has_frozen) {
                cr_assert_eq(state_freeze(s), 0);
                has_frozen = true;
                frozen_view = live;
            } else if (!committing) {
                cr_assert_eq(state_commit_frozen(s, nothing, NULL), 0);
                committing = true;
            } else {
                int rc = state_commit_finish(s);
                while (rc == 2) {
                    usleep(100);
                    rc = state_commit_finish(s);
                }
                cr_assert_eq(rc, 0);
                committing = has_frozen = false;
                committed = frozen_view;
            }
        } else if (what < 990) { /* a synchronous commit of everything */
            cr_assert_eq(state_commit(s), 0);
            committing = has_frozen = false;
            committed = live;
        } else { /* abort: back to what LMDB holds */
            if (committing) {
                /* A running commit is kept (its records were durable). */
                committed = frozen_view;
            }
            cr_assert_eq(state_abort(s), 0);
            committing = has_frozen = false;
            live = committed;
        }
    }
    /* Everything once more, whole tables both ways. */
    for (int t = 0; t < TABLES; t++) {
        for (int k = 0; k < KEYS; k++)
            check_get(s, &live, t, k);
        check_walk(s, &live, t, 0, 1, KEYS + 1, false);
        check_walk(s, &live, t, 0, -1, KEYS + 1, true);
    }
    state_close(s);
    eu_rmrf(dir);
}
