/*
 * fuzz_resp.c — libFuzzer target for the RESP request parser
 * (engine/resp.c).
 *
 * The input is a client's byte stream.  It is parsed twice: whole (every
 * byte available at once) and chunked (delivered in pieces whose sizes
 * come from a hash of the input, so a mutation changes the chunking too).
 * In chunked mode every resp_parse() call gets a fresh heap copy of exactly
 * the unconsumed bytes: the buffer moves between calls, and ASan reports
 * any read past buf + len.  Both runs write a transcript (every command,
 * skip and the final outcome); they must be identical.
 *
 * Invariants asserted on every call: the return code is one of the four;
 * consumed is 0 unless a command or skip was parsed, then 1..len; a
 * command has 1..LIMIT_ARGS_MAX arguments, each inside the consumed bytes
 * (multibulk, at most LIMIT_BULK_BYTES_MAX) or inside scratch (inline); the
 * parser never claims to have checked more bytes than it was given; a
 * protocol error says "Protocol error: " and is sticky.  Every command is
 * also re-encoded as a multibulk with the reply encoders and must parse
 * back to the same arguments.
 *
 * Build and run: make fuzz (or see the Makefile's fuzz target).
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

static resp_command fuzz_cmd;
static resp_command fuzz_cmd_back;

/* ---- chunk sizes from the input ----------------------------------------- */

static uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 0x100000001b3ULL;
    return h;
}

static size_t fuzz_next_chunk(uint64_t *state)
{
    /* xorshift64*: cheap and never stuck at zero (the seed is made odd). */
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    uint64_t r = x * 0x2545f4914f6cdd1dULL;
    switch (r & 3) {
    case 0: return 1;
    case 1: return 1 + (size_t)(r >> 8) % 8;
    case 2: return 1 + (size_t)(r >> 8) % 64;
    default: return 1 + (size_t)(r >> 8) % 2048;
    }
}

/* ---- invariants --------------------------------------------------------- */

static void fuzz_check_command(const char *buf, size_t used)
{
    const resp_command *c = &fuzz_cmd;
    assert(c->argc >= 1 && c->argc <= LIMIT_ARGS_MAX);
    for (uint32_t i = 0; i < c->argc; i++) {
        uint64_t end = (uint64_t)c->argv_off[i] + c->argl[i];
        if (c->argv_scratch) {
            assert(end <= sizeof(c->scratch));
        } else {
            assert(c->argl[i] <= LIMIT_BULK_BYTES_MAX);
            assert(end + 2 <= used);
            assert(buf[end] == '\r' && buf[end + 1] == '\n');
        }
    }
}

/* Encodes the command as a multibulk and parses it back: the encoders and
 * the parser agree, and inline unescaping is what a client meant. */
static void fuzz_check_roundtrip(const char *buf)
{
    const resp_command *c = &fuzz_cmd;
    for (uint32_t i = 0; i < c->argc; i++)
        if (c->argl[i] > LIMIT_BULK_BYTES_MAX)
            return; /* an inline word may be longer than a bulk may be */
    resp_out o = {0};
    resp_array(&o, c->argc);
    for (uint32_t i = 0; i < c->argc; i++)
        resp_bulk(&o, resp_arg(c, buf, i), c->argl[i]);
    assert(!o.oom);
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    int rc = resp_parse(&p, o.data, o.len, &fuzz_cmd_back, &used);
    assert(rc == RESP_COMMAND);
    assert(used == o.len);
    assert(fuzz_cmd_back.argc == c->argc);
    for (uint32_t i = 0; i < c->argc; i++) {
        assert(fuzz_cmd_back.argl[i] == c->argl[i]);
        assert(memcmp(resp_arg(&fuzz_cmd_back, o.data, i), resp_arg(c, buf, i), c->argl[i]) ==
               0);
    }
    resp_out_free(&o);
}

/* One resp_parse() call with every per-call invariant checked. */
static int fuzz_parse(resp_parser *p, const char *buf, size_t len, size_t *used)
{
    *used = 7777;
    int rc = resp_parse(p, buf, len, &fuzz_cmd, used);
    assert(rc == RESP_MORE || rc == RESP_COMMAND || rc == RESP_SKIP || rc == RESP_EPROTO);
    if (rc == RESP_MORE || rc == RESP_EPROTO)
        assert(*used == 0);
    else
        assert(*used >= 1 && *used <= len);
    if (rc == RESP_MORE)
        assert(p->pos <= len);
    if (rc == RESP_COMMAND) {
        fuzz_check_command(buf, *used);
        fuzz_check_roundtrip(buf);
    }
    if (rc == RESP_EPROTO) {
        assert(strncmp(p->error, "Protocol error: ", 16) == 0);
        assert(strchr(p->error, '\r') == NULL && strchr(p->error, '\n') == NULL);
        char before[sizeof(p->error)];
        memcpy(before, p->error, sizeof(before));
        size_t again = 1;
        assert(resp_parse(p, buf, len, &fuzz_cmd_back, &again) == RESP_EPROTO);
        assert(again == 0);
        assert(memcmp(before, p->error, sizeof(before)) == 0);
    }
    return rc;
}

/* ---- transcripts -------------------------------------------------------- */

/* Appends what one call produced: rc, bytes used, arguments, error. */
static void fuzz_note(resp_out *t, int rc, size_t used, const resp_parser *p, const char *buf)
{
    char head[64];
    int n = snprintf(head, sizeof(head), "<%d %zu", rc, used);
    resp_raw(t, head, (size_t)n);
    if (rc == RESP_COMMAND) {
        resp_array(t, fuzz_cmd.argc);
        for (uint32_t i = 0; i < fuzz_cmd.argc; i++)
            resp_bulk(t, resp_arg(&fuzz_cmd, buf, i), fuzz_cmd.argl[i]);
    }
    if (rc == RESP_EPROTO)
        resp_raw(t, p->error, strlen(p->error));
    resp_raw(t, ">", 1);
}

enum { FUZZ_WHOLE, FUZZ_CHUNKS, FUZZ_BYTES };

/* Parses data[0, size) delivered all at once, in chunks drawn from
 * chunk_seed, or one byte at a time. */
static void fuzz_run(const uint8_t *data, size_t size, int mode, uint64_t chunk_seed,
                     resp_out *t)
{
    resp_parser p;
    resp_parser_reset(&p);
    size_t start = 0, avail = mode == FUZZ_WHOLE ? size : 0;
    for (;;) {
        if (avail < size) {
            size_t step = mode == FUZZ_BYTES ? 1 : fuzz_next_chunk(&chunk_seed);
            avail += step < size - avail ? step : size - avail;
        }
        for (;;) {
            size_t len = avail - start, used = 0;
            /* An exact-size copy: the buffer moves on every call and a read
             * past len is a heap overflow. */
            char *buf = malloc(len);
            assert(buf != NULL || len == 0);
            if (len > 0)
                memcpy(buf, data + start, len);
            int rc = fuzz_parse(&p, buf, len, &used);
            if (rc != RESP_MORE || avail == size)
                fuzz_note(t, rc, used, &p, buf);
            free(buf);
            if (rc == RESP_EPROTO)
                return;
            if (rc == RESP_MORE)
                break;
            start += used;
        }
        if (avail == size)
            return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    resp_out whole = {0}, chunked = {0};
    fuzz_run(data, size, FUZZ_WHOLE, 0, &whole);
    fuzz_run(data, size, FUZZ_CHUNKS, fuzz_hash(data, size) | 1, &chunked);
    assert(!whole.oom && !chunked.oom);
    assert(whole.len == chunked.len);
    assert(memcmp(whole.data, chunked.data, whole.len) == 0);
    if (size <= 1024) {
        /* One byte per call: the finest split there is (bounded, as each
         * call copies the unconsumed bytes). */
        resp_out trickled = {0};
        fuzz_run(data, size, FUZZ_BYTES, 0, &trickled);
        assert(!trickled.oom);
        assert(trickled.len == whole.len);
        assert(memcmp(trickled.data, whole.data, whole.len) == 0);
        resp_out_free(&trickled);
    }
    resp_out_free(&whole);
    resp_out_free(&chunked);
    return 0;
}
