/*
 * follow.h — `tally follow HOST:PORT`, a client of FOLLOW (SPEC §8)
 * (tools/tally.c dispatches to it):
 *
 *   tally follow HOST:PORT [--merchant M] [--cursor FILE] [--auth-file FILE]
 *                [--count N] [--once]
 *
 * Prints merchant M's entries (every merchant's without --merchant:
 * FOLLOW *, an admin's) as JSON lines, the `tally dump` line (export.h)
 * with the entry's fields — a feed does not carry the request's — oldest
 * first, and waits for new ones (BLOCK) for good, or with --once stops
 * when it has caught up.
 *
 * Delivery is at least once.  With --cursor FILE it starts after the
 * cursor the file holds (from the beginning if there is no file yet) and,
 * after each batch of lines is written and flushed, replaces the file
 * atomically (a temporary file, fsync, rename, fsync of the directory)
 * with the batch's cursor: killed at any moment, it resumes after the
 * last batch it knows was flushed, so a consumer may see lines again —
 * never miss one — and tells them apart by (merchant, seq).  It
 * reconnects when the server goes away (a restart), with a growing pause
 * up to 5 s, saying so on standard error.
 *
 * The token (a server with --auth-file) comes from the file named by
 * --auth-file — its first word: a file with just the token, or a line of
 * tallyd's own auth file — or from the environment variable TALLY_AUTH,
 * never from the command line (other users see it in ps).
 *
 * Exit status: 0 (--once, caught up), 1 an error the server or the output
 * gave that retrying cannot mend (a refused token, a cursor before the
 * retained log, a closed pipe), 2 a usage error.
 */
#ifndef TALLY_FOLLOW_H
#define TALLY_FOLLOW_H

#include <stdio.h>

/* Runs `tally follow` with argv[0] being HOST:PORT or an option; lines to
 * out, messages to err.  Returns the exit status. */
int follow_main(int argc, char **argv, FILE *out, FILE *err);

/* The usage lines of `tally follow`, for tally --help. */
extern const char follow_usage[];

#endif
