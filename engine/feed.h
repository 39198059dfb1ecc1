/*
 * feed.h — FOLLOW (SPEC §8), the change feed: merchant m's durable
 * entries after a cursor (or every merchant's), read from the shards'
 * logs by a thread of its own, never by a shard thread, and followers
 * that wait for new entries (BLOCK).
 *
 * Bounded work: one read returns at most its COUNT entries and looks at
 * most at LIMIT_FOLLOW_SCAN_RECORDS other records (other merchants'
 * entries, refusals, allocation parts: checked by checksum and chain,
 * not decoded); the cursor moves past everything it looked at, so a
 * quiet merchant's follower is never stuck behind a busy shard and never
 * rescans it.
 *
 * Waiting: a follower that found nothing up to the durable end is parked
 * in a table by merchant (FOLLOW * in a list of its own) and in a heap of
 * deadlines.  A shard whose batch became durable calls feed_notify(): one
 * flag test while nobody waits on that shard, otherwise one flag and (at
 * most once per feed turn) a condition-variable signal — nothing per
 * waiting follower.  The feed thread then reads the shard's new records
 * once, notes the merchants whose entries arrived, and wakes only their
 * followers, which read from their own cursors.
 *
 * Lifecycle: feed_new() (before the shards open: they get feed_notify)
 * → feed_start() (the shards) → feed_submit()/feed_wake() → feed_close().
 */
#ifndef TALLY_FEED_H
#define TALLY_FEED_H

#include <stdint.h>

#include "shard.h"
#include "tally.h"

typedef struct feed feed;

/* A feed for `shards` shards, not started.  -ENOMEM. */
int feed_new(uint32_t shards, feed **out);
/* Starts the feed thread over the open shards (the array is the
 * caller's and outlives the feed).  -errno. */
int feed_start(feed *f, shard *const *shards);
/* Stops the thread and answers every request it holds ([cursor, none],
 * as a timeout would); NULL is ok.  Before the shards close. */
void feed_close(feed *f);
/* Frees it, after the shards closed (they call feed_notify until then). */
void feed_free(feed *f);

/* A checked FOLLOW request (tally_request_check): answered by done() on
 * the feed thread (or at once if the feed is closing). */
void feed_submit(feed *f, tally_request *req);
/* tally_wake (tally.h). */
void feed_wake(feed *f, tally_request *req);
/* The shard hook: a batch of shard `index` became durable.  Any thread;
 * ctx is the feed. */
void feed_notify(void *ctx, uint32_t index);

#endif
