/*
 * config.h — tallyd's configuration: command-line options and the auth
 * file (SPEC §5 "Server").
 *
 * Auth file: one token per line, `token merchant[,merchant...]` or
 * `token *` (admin: every merchant and the admin commands).  Blank lines
 * and lines starting with '#' are ignored.  Tokens are 1..128 printable
 * bytes; merchants are decimal 1..2^64-1.  Without an auth file the server
 * is open and refuses a non-loopback --bind unless --insecure is given.
 *
 * --metrics [ADDR:]PORT (ADDR 127.0.0.1 unless given; [ADDR]:PORT for
 * IPv6) serves GET /metrics over HTTP.  The same rule as --bind: without
 * an auth file a non-loopback ADDR needs --insecure; with one, every
 * scrape must carry an admin token (Authorization: Bearer TOKEN).
 */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

#define CONFIG_TOKEN_BYTES_MAX 128
#define CONFIG_TOKENS_MAX 100000
#define CONFIG_TOKEN_MERCHANTS_MAX 100000

typedef struct config_token {
    char token[CONFIG_TOKEN_BYTES_MAX + 1];
    uint32_t token_len;
    bool admin;
    uint32_t merchants_count;
    uint64_t *merchants; /* sorted */
} config_token;

typedef struct config_auth {
    config_token *tokens; /* sorted by token */
    uint32_t tokens_count;
} config_auth;

typedef struct config {
    char dir[4096];
    char bind[64];
    uint16_t port;
    uint32_t shards;      /* 0: the manifest's, or the CPU count */
    int sync;             /* enum tally_sync */
    char auth_file[4096]; /* "" = open server */
    bool insecure;
    uint32_t max_clients;
    uint32_t checkpoint_ms;      /* 0 = engine default */
    uint32_t checkpoint_records; /* 0 = engine default */
    uint32_t segment_bytes;      /* 0 = engine default */
    uint64_t snapshot_every_records; /* --snapshot-every N */
    uint64_t snapshot_every_ms;      /* --snapshot-every Ns|Nm|Nh */
    int retention;                   /* enum tally_retention */
    char archive_dir[4096];
    char metrics_bind[64];  /* --metrics ADDR, default 127.0.0.1 */
    uint16_t metrics_port;  /* --metrics PORT; 0: no metrics endpoint */
    /* Cluster mode (SPEC §8, repl.h): "" standalone. */
    char cluster[LIMIT_ZK_HOSTS_BYTES_MAX + LIMIT_CLUSTER_NAME_BYTES_MAX + 2]; /* ZK/NAME */
    char node_id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    char advertise[LIMIT_CLUSTER_HOST_BYTES_MAX + 8]; /* HOST:PORT clients are sent to */
    bool ack_local;            /* --ack local (default replicated) */
    uint32_t zk_session_ms;    /* 0: LIMIT_ZK_SESSION_MS_DEFAULT */
    char repl_secret[4096];    /* file; "" = the cluster's secret in ZooKeeper */
    char repl_bind[64];        /* "" = --bind */
    bool help;
} config;

/* Defaults: ./data, 127.0.0.1:7379, sync always. */
void config_defaults(config *c);

/* Parses tallyd's arguments.  0, or -EINVAL with a message in err.
 * --retention archive needs --archive-dir.  --cluster needs --node-id
 * and --advertise, and takes no --shards (each shard group is one shard);
 * the cluster options need --cluster. */
int config_parse(config *c, int argc, char **argv, char *err, size_t cap);

/* The usage text. */
const char *config_usage(void);

/* True if addr is a loopback address (127.0.0.0/8, ::1, localhost). */
bool config_is_loopback(const char *addr);

/* Loads an auth file.  0, or -errno / -EINVAL with the line in err. */
int config_auth_load(const char *path, config_auth **out, char *err, size_t cap);
void config_auth_free(config_auth *a);

/* The token's entry, or NULL (constant time in the token's bytes is not
 * needed: tokens are looked up by a sorted search, and a miss says
 * nothing an attacker could not learn from the reply). */
const config_token *config_auth_find(const config_auth *a, const char *token, size_t len);

/* May this token act for merchant m? */
bool config_token_allows(const config_token *t, uint64_t merchant);

/* Parses a decimal u64 (digits only, leading zeros allowed).  0 on success,
 * -EINVAL if not all digits / empty, -ERANGE on overflow. */
int config_parse_u64(const char *s, size_t len, uint64_t *out);

/* Parses a retention name (keep, delete, archive) into enum
 * tally_retention.  0, or -EINVAL for any other word. */
int config_parse_retention(const char *s, int *out);

#endif
