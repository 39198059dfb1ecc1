/*
 * tally_int.h — the data directory object, for the modules that work on
 * it as a whole (tally.c, import.c).  Not for other modules.
 */
#ifndef TALLY_TALLY_INT_H
#define TALLY_TALLY_INT_H

#include "feed.h"
#include "shard.h"
#include "tally.h"

struct tally {
    tally_options opts;
    char dir[4096];
    int lock_fd;
    uint32_t shard_count;
    shard *shards[LIMIT_SHARDS_MAX];
    feed *feed; /* FOLLOW; NULL for read-only and offline opens */
};

/* Opens every shard; with undo_bases, undoing an uncommitted import that
 * began after undo_bases[i] on shard i. */
int tally_open_shards(tally *t, const uint64_t *undo_bases);
void tally_close_shards(tally *t);
/* Reports through opts.log (stderr without one). */
void tally_say(const tally *t, int level, const char *msg);

#endif
