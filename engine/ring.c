/*
 * ring.c — io_uring for one shard thread (ring.h).  The only module that
 * includes liburing.h (STYLE rule 2).
 *
 * A ring_write() is a "job": a write SQE linked (IOSQE_IO_LINK) to an
 * fdatasync SQE, so the flush runs only after the write and covers it.
 * A short write breaks the link (the flush completes -ECANCELED); the job
 * then writes the remainder and flushes again.  Each job reports exactly
 * one (tag, res) to the caller: 0, or the first failure.  Every write and
 * flush completion passes through os->io_result first, so tests can turn
 * any of them into a fault.  Waiting blocks in the kernel (no SQPOLL, no
 * spinning): on this machine a busy CPU slows flushes down several-fold.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <liburing.h>

#include "ring.h"

/* ---- types -------------------------------------------------------------- */

enum { RING_OP_WRITE = 1, RING_OP_FSYNC = 2, RING_OP_POLL = 3 };

typedef struct ring_job {
    bool used;
    bool sync;
    int fd;
    const uint8_t *buf;
    size_t len;
    uint64_t off;
    size_t done_bytes; /* written so far */
    uint32_t outstanding; /* completions still to come */
    int err;           /* first failure */
    uint64_t tag;
} ring_job;

struct ring {
    struct io_uring uring;
    const os_ops *os;
    unsigned jobs_count;
    ring_job *jobs;
};

/* user_data: job or poll tag << 8 | op. */
static uint64_t ring_ud(uint64_t index, int op) { return index << 8 | (uint64_t)op; }

/* ---- lifecycle ---------------------------------------------------------- */

int ring_open(unsigned depth, const os_ops *os, ring **out)
{
    ring *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->jobs = calloc(depth, sizeof(*r->jobs));
    if (!r->jobs) {
        free(r);
        return -ENOMEM;
    }
    r->jobs_count = depth;
    r->os = os ? os : os_default();
    int rc = io_uring_queue_init(depth * 2 + 8, &r->uring, 0);
    if (rc < 0) {
        free(r->jobs);
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void ring_close(ring *r)
{
    if (!r)
        return;
    io_uring_queue_exit(&r->uring);
    free(r->jobs);
    free(r);
}

/* ---- submission --------------------------------------------------------- */

/* Queues the job's remaining bytes: a write, linked to a flush if sync. */
static int ring_queue_job(ring *r, unsigned index)
{
    ring_job *j = &r->jobs[index];
    unsigned need = j->sync ? 2 : 1;
    if (io_uring_sq_space_left(&r->uring) < need)
        return -EBUSY;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    io_uring_prep_write(sqe, j->fd, j->buf + j->done_bytes, (unsigned)(j->len - j->done_bytes),
                        j->off + j->done_bytes);
    io_uring_sqe_set_data64(sqe, ring_ud(index, RING_OP_WRITE));
    if (j->sync) {
        sqe->flags |= IOSQE_IO_LINK;
        sqe = io_uring_get_sqe(&r->uring);
        io_uring_prep_fsync(sqe, j->fd, IORING_FSYNC_DATASYNC);
        io_uring_sqe_set_data64(sqe, ring_ud(index, RING_OP_FSYNC));
    }
    j->outstanding = need;
    return 0;
}

int ring_write(ring *r, int fd, const void *buf, size_t len, uint64_t off, bool sync,
               uint64_t tag)
{
    unsigned index = 0;
    while (index < r->jobs_count && r->jobs[index].used)
        index++;
    if (index == r->jobs_count)
        return -EBUSY;
    r->jobs[index] = (ring_job){.used = true, .sync = sync, .fd = fd, .buf = buf, .len = len,
                                .off = off, .tag = tag};
    int rc = ring_queue_job(r, index);
    if (rc < 0)
        r->jobs[index].used = false;
    return rc;
}

int ring_poll(ring *r, int fd, uint64_t tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, ring_ud(tag, RING_OP_POLL));
    return 0;
}

int ring_submit(ring *r)
{
    int rc;
    do
        rc = io_uring_submit(&r->uring);
    while (rc == -EINTR);
    return rc < 0 ? rc : 0;
}

/* ---- completion --------------------------------------------------------- */

/* Handles one completion of a job; returns 1 if the job finished and
 * *res holds its outcome, 0 if more is to come. */
static int ring_job_event(ring *r, unsigned index, int op, int cqe_res, int *res)
{
    ring_job *j = &r->jobs[index];
    size_t remaining = j->len - j->done_bytes;
    if (op == RING_OP_WRITE) {
        int v = cqe_res;
        if (r->os->io_result)
            v = r->os->io_result(r->os->ctx, OS_IO_WRITE, j->fd, j->off + j->done_bytes,
                                 remaining, cqe_res);
        if (v < 0 && j->err == 0)
            j->err = v;
        else if (v == 0 && j->err == 0)
            j->err = -EIO; /* no progress: not a write */
        else if (v > 0)
            j->done_bytes += (size_t)v < remaining ? (size_t)v : remaining;
    } else {
        int v = cqe_res;
        /* A flush cancelled because its write was short is redone below;
         * any other failure of a flush is final (never retried). */
        bool short_cancel = cqe_res == -ECANCELED && j->err == 0 && j->done_bytes < j->len;
        if (!short_cancel && r->os->io_result)
            v = r->os->io_result(r->os->ctx, OS_IO_FSYNC, j->fd, j->off, j->len, cqe_res);
        if (!short_cancel && v < 0 && j->err == 0)
            j->err = v;
    }
    if (--j->outstanding > 0)
        return 0;
    if (j->err == 0 && j->done_bytes < j->len) {
        int rc = ring_queue_job(r, index);
        if (rc == 0)
            rc = ring_submit(r);
        if (rc == 0)
            return 0;
        j->err = rc;
    }
    *res = j->err;
    j->used = false;
    return 1;
}

int ring_wait(ring *r, int timeout_ms, uint64_t *tag, int *res)
{
    for (;;) {
        struct io_uring_cqe *cqe;
        int rc;
        if (timeout_ms < 0) {
            rc = io_uring_wait_cqe(&r->uring, &cqe);
        } else {
            struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                           .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
            rc = io_uring_wait_cqe_timeout(&r->uring, &cqe, &ts);
        }
        if (rc == -EINTR)
            continue;
        if (rc < 0)
            return rc; /* -ETIME on timeout */
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        int cqe_res = cqe->res;
        io_uring_cqe_seen(&r->uring, cqe);
        int op = (int)(ud & 0xff);
        uint64_t index = ud >> 8;
        if (op == RING_OP_POLL) {
            *tag = index;
            *res = cqe_res < 0 ? cqe_res : 0;
            return 0;
        }
        if (index >= r->jobs_count || !r->jobs[index].used)
            continue; /* stray completion: nothing waits for it */
        int out = 0;
        if (ring_job_event(r, (unsigned)index, op, cqe_res, &out)) {
            *tag = r->jobs[index].tag;
            *res = out;
            return 0;
        }
    }
}
