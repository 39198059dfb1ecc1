/*
 * ring.h — a thin io_uring wrapper for one shard thread: batched log
 * writes each linked to a flush, and a poll on the shard's wakeup eventfd,
 * completed by blocking waits (never SQPOLL, never spinning: a busy CPU
 * slows this machine's flushes down several-fold).  The only module that
 * includes liburing.h.
 *
 * Buffer lifetime: a buffer passed to ring_write() must stay valid and
 * unchanged until its completion has been returned by ring_wait().
 */
#ifndef TALLY_RING_H
#define TALLY_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "os.h"

typedef struct ring ring;

/* Creates a ring with room for `depth` submissions.  os->io_result sees
 * every write/flush completion.  Errors: -errno. */
int ring_open(unsigned depth, const os_ops *os, ring **out);
void ring_close(ring *r);

/* Queues "write len bytes of buf at off to fd, then fdatasync(fd) if
 * sync", linked so the flush covers the write.  Nothing is submitted until
 * ring_submit().  Short writes are finished internally (the remainder is
 * written and flushed again) before one completion is reported for tag.
 * Errors: -EBUSY if the queue is full. */
int ring_write(ring *r, int fd, const void *buf, size_t len, uint64_t off, bool sync,
               uint64_t tag);

/* Queues a one-shot poll for readability of fd; reported with tag. */
int ring_poll(ring *r, int fd, uint64_t tag);

/* Submits everything queued with one system call.  Errors: -errno. */
int ring_submit(ring *r);

/* Blocks until a completion is ready or timeout_ms passes (-1: forever).
 * On a completion writes *tag and *res (0 or -errno: the first failure of
 * the write or its flush; a write that made no progress is -EIO) and
 * returns 0; on timeout returns -ETIME. */
int ring_wait(ring *r, int timeout_ms, uint64_t *tag, int *res);

#endif
