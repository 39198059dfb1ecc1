/*
 * command.h — the commands tallyd answers (the table is commands.def):
 * checking a parsed RESP command, turning it into an engine request, and
 * encoding the engine's result as a reply.  Transport-free: the server
 * owns sockets and ordering; this module owns what the words mean.
 *
 * Errors follow SPEC §3: -ERR for unknown commands, arity, syntax and
 * malformed numbers (Redis's wording where Redis has one); -INVALID for a
 * well-formed value out of range; -NOAUTH / -NOPERM before anything else
 * is looked at; the engine's own codes for what the ledger decides.
 */
#ifndef TALLY_COMMAND_H
#define TALLY_COMMAND_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "resp.h"
#include "tally.h"

/* Per-connection protocol state. */
typedef struct command_session {
    uint64_t id;                /* CLIENT ID */
    int proto;                  /* 2, or 3 after HELLO 3 */
    const config_token *token;  /* after AUTH; NULL if none */
    bool quit;                  /* QUIT: close after this reply */
    uint32_t command;           /* out: the table row of the last command
                                 * dispatched, command_count() if unknown */
    char name[64];              /* CLIENT SETNAME */
    char lib_name[64];          /* CLIENT SETINFO LIB-NAME */
    char lib_ver[64];           /* CLIENT SETINFO LIB-VER */
    /* MULTI: the commands queued for EXEC, all for multi_merchant */
    bool multi;                 /* between MULTI and EXEC or DISCARD */
    bool multi_failed;          /* a command was refused while queued: EXEC aborts */
    uint64_t multi_merchant;    /* 0 until a command is queued */
    uint32_t multi_units;       /* their reply units (command_units) */
    tally_request *multi_cmds;
    uint32_t multi_count, multi_cap;
    bool readonly;              /* READONLY: a cluster replica may serve reads */
    uint32_t route_group;       /* out, cluster mode: the group a COMMAND_SUBMIT
                                 * goes to (COMMAND_ALL_GROUPS: every engine) */
} command_session;

#define COMMAND_ALL_GROUPS UINT32_MAX

/* Frees what a session holds (commands queued by a MULTI); the session
 * can be used again. */
void command_session_free(command_session *s);

/* The server's settings that INFO and CONFIG GET report; its counters
 * are in the metrics module. */
typedef struct command_server_info {
    uint32_t max_clients;
    uint16_t port;
    const char *bind;
    const char *dir;
    int sync;
} command_server_info;

struct repl;

typedef struct command_env {
    tally *t;                         /* NULL in cluster mode */
    struct repl *cluster;             /* cluster mode (repl.h); NULL standalone */
    const config_auth *auth;          /* NULL: open server */
    const command_server_info *info;  /* may be NULL (tests) */
    const metrics *metrics;           /* may be NULL (tests) */
} command_env;

enum command_outcome {
    COMMAND_REPLIED = 0, /* the reply is in out */
    COMMAND_SUBMIT = 1,  /* req is filled: submit it, then command_reply() */
};

/* Looks at one parsed command (args in buf, see resp.h) and either writes
 * its reply into out (COMMAND_REPLIED; s->quit set by QUIT) or fills req,
 * which the caller zeroed, for the engine (COMMAND_SUBMIT).  In cluster
 * mode a command for a merchant is routed first (SPEC §8): its merchant
 * must be canonical decimal (-INVALID), and a slot this node does not
 * serve for it answers -MOVED or -TRYAGAIN; s->route_group says where a
 * COMMAND_SUBMIT goes (repl_submit, or repl_submit_all). */
int command_dispatch(const command_env *env, command_session *s, const resp_command *cmd,
                     const char *buf, tally_request *req, resp_out *out);

/* Reply units a submitted request weighs (backpressure: an entry's worth
 * of reply each): HISTORY LIMIT n and FOLLOW COUNT n weigh n, an EXEC
 * what its commands weigh, anything else 1. */
uint32_t command_units(const tally_request *req);

/* Encodes the engine's answer to a submitted request in protocol proto
 * (the session's protocol when the request was dispatched: a HELLO later
 * in the same pipeline does not change it). */
void command_reply(int proto, const tally_request *req, resp_out *out);

/* The number of commands in the table (COMMAND COUNT). */
unsigned command_count(void);
/* The name of row i of the table (i < command_count()), lower case. */
const char *command_name(unsigned i);

#endif
