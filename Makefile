# tally — one non-recursive Makefile (STYLE.md rule 15).
#   make            build everything into build/
#   make run        build and start tallyd on ./data, 127.0.0.1:7379
#   make test       build and run every test (Criterion; SAN=1: ASan+UBSan,
#                   SAN=thread: ThreadSanitizer)
#   make bench      run the benchmark suite (bench/)
#   make fuzz       run the RESP parser and record decoder fuzzers
#   make clean
# V=1 shows the commands.

CC ?= cc
CFLAGS ?= -O2 -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wno-missing-field-initializers -MMD -MP -pthread -Iengine
override LDLIBS += -llmdb -lxxhash -luring -lzookeeper_mt -lcrypto -pthread -lm

ifeq ($(SAN),1)
BUILD := build-san
override CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
override LDFLAGS += -fsanitize=address,undefined
else ifeq ($(SAN),thread)
# ThreadSanitizer: its own build directory, so objects never mix.  Every
# process of a test run (the test binary, each tallyd and tool it starts)
# writes its reports into $(BUILD)/tsan/, and make test fails on any.
BUILD := build-tsan
override CFLAGS += -fsanitize=thread -fno-omit-frame-pointer
override LDFLAGS += -fsanitize=thread
else
BUILD := build
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

# Debian packages each target needs; installed when missing (as root) or the
# exact command is printed.
# libhiredis-dev: `tally follow`'s RESP client (engine/follow.c; tally links it).
# libssl-dev: HMAC-SHA256 for the replication handshake (engine/repl_proto.c).
# libzookeeper-mt-dev: the cluster's ZooKeeper client (engine/zk.c).  zookeeperd:
# the ZooKeeper server; the cluster tests run its Java server privately
# (tests/zk_util.c) and never use the system service the package sets up.
DEPS_BUILD := build-essential liblmdb-dev libxxhash-dev liburing-dev pkg-config \
	libzookeeper-mt-dev libhiredis-dev libssl-dev
# curl and prometheus (for promtool): tests/metrics_test.c scrapes /metrics
# and checks the text with Prometheus' own linter.
DEPS_TEST := $(DEPS_BUILD) libcriterion-dev libhiredis-dev redis-tools xfsprogs strace \
	python3-redis jq curl prometheus zookeeperd
DEPS_BENCH := $(DEPS_TEST) redis-server postgresql postgresql-contrib sqlite3 libsqlite3-dev lmdb-utils gnuplot-nox jq bc time
DEPS_FUZZ := $(DEPS_TEST) clang libfuzzer-14-dev

ENGINE_SRC := $(wildcard engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/%.o)
LIB := $(BUILD)/libtally.a

TOOLS := $(patsubst tools/%.c,$(BUILD)/%,$(wildcard tools/*.c))
# bench/*.c are the modules of one binary, tally-bench (libc + libtally
# only, so `make all` needs no bench packages); bench/peers/*.c are the peer
# programs (SQLite, LMDB), each its own binary, built only by `make bench`.
BENCH_SRC := $(wildcard bench/*.c)
BENCH_OBJ := $(BENCH_SRC:%.c=$(BUILD)/%.o)
BENCH_BIN := $(if $(BENCH_SRC),$(BUILD)/tally-bench)
PEER_BIN := $(patsubst bench/peers/%.c,$(BUILD)/peer-%,$(wildcard bench/peers/*.c))
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(BUILD)/tally-tests

.PHONY: all run test test-crash test-cluster bench bench-peers bench-import bench-cluster fuzz clean deps-build deps-test deps-bench deps-fuzz deps-examples
all: $(LIB) $(TOOLS) $(BENCH_BIN)

define ensure_pkgs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || exit 1; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

# npm packages of the client tests (tests/clients/package-lock.json: ioredis,
# and node-redis for the cluster's clients),
# into tests/clients/node_modules (git-ignored), the same way: installed as
# root, otherwise the exact command is printed.  npm itself comes with
# Node.js (Debian: nodejs npm).
NPM_CI := npm ci --prefix tests/clients --no-audit --no-fund
define ensure_npm
	@if [ ! -d tests/clients/node_modules/ioredis ] || [ ! -d tests/clients/node_modules/redis ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    command -v npm >/dev/null || (apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null || exit 1; \
	    echo "installing: ioredis, redis (npm)"; $(NPM_CI) >/dev/null || exit 1; \
	  else \
	    echo "missing npm packages; run: $(NPM_CI)"; exit 1; \
	  fi; \
	fi
endef

deps-build: ; $(call ensure_pkgs,$(DEPS_BUILD))
deps-test:
	$(call ensure_pkgs,$(DEPS_TEST))
	$(call ensure_npm)
deps-bench: ; $(call ensure_pkgs,$(DEPS_BENCH))
deps-fuzz: ; $(call ensure_pkgs,$(DEPS_FUZZ))

# The client examples (examples/, run by tests/examples_test.c): redis-py,
# node and npm (Debian's, when the machine has no npm), and the npm packages
# pinned in examples/node/package-lock.json.  Not fatal: without them the
# examples' tests fail under CI=true and skip otherwise, saying why.
DEPS_EXAMPLES = python3-redis $(if $(shell command -v npm),,nodejs npm)
EXAMPLES_NODE := examples/node/node_modules/.package-lock.json
EXAMPLE_BIN := $(BUILD)/examples/loyalty-hiredis
deps-examples:
	-$(call ensure_pkgs,$(DEPS_EXAMPLES))
	-$(Q)$(MAKE) -s --no-print-directory $(EXAMPLES_NODE)
$(EXAMPLES_NODE): examples/node/package.json examples/node/package-lock.json
	@echo "installing the npm packages of examples/node/package-lock.json"
	cd examples/node && npm ci --no-audit --no-fund --loglevel=error || \
	  { echo "npm ci failed: the Node examples' tests skip (fail under CI=true)"; exit 1; }

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC $<")
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(ENGINE_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/%: $(BUILD)/tools/%.o $(LIB)
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)
# `tally follow` speaks RESP through hiredis (engine/follow.c).
$(BUILD)/tally: override LDLIBS += -lhiredis

$(BUILD)/tally-bench: $(BENCH_OBJ) $(LIB)
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/peer-%: $(BUILD)/bench/peers/%.o
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lsqlite3
# Keep the peers' objects (make would delete them as intermediates and
# rebuild them every time).
.SECONDARY: $(PEER_BIN:$(BUILD)/peer-%=$(BUILD)/bench/peers/%.o)

$(TEST_BIN): $(TEST_OBJ) $(LIB)
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcriterion -lhiredis

# The fuzz targets without libFuzzer: tests/fuzz/replay.c feeds them files,
# and make test replays the committed corpora through them
# (tests/fuzz_test.c), built like everything else here (SAN=1: under ASan
# and UBSan, as libFuzzer runs them).  make fuzz still does the fuzzing.
FUZZ_REPLAY := $(patsubst tests/fuzz/fuzz_%.c,$(BUILD)/fuzz-replay-%,$(wildcard tests/fuzz/fuzz_*.c))
$(BUILD)/fuzz-replay-%: $(BUILD)/tests/fuzz/replay.o $(BUILD)/tests/fuzz/fuzz_%.o $(LIB)
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(EXAMPLE_BIN): $(BUILD)/examples/c/loyalty.o
	@$(if $(Q),echo "  LD $@")
	$(Q)$(CC) $(LDFLAGS) $^ -o $@ -lhiredis

# Build first in one make (deps installed), then run.
run: deps-build
	$(Q)$(MAKE) --no-print-directory all
	$(BUILD)/tallyd --dir ./data --port 7379 --bind 127.0.0.1

# Integration tests find the binaries through TALLY_BUILD.  Criterion's
# summary line is what CI reads.  TEST_ARGS=--filter='ledger/*' narrows.
# Criterion counts a test whose worker leaks (LeakSanitizer reports at the
# worker's exit, after its result) as passed: a leak report anywhere in the
# output fails the run instead (tests/main.c says why the runner's own exit
# is not checked).  Criterion also leaves skipped tests out of "Tested: N":
# the run fails unless N is every test the suite defines (narrowed by a
# --filter in TEST_ARGS; tests/expected_tests.sh counts them).  Under
# CI=true a test that cannot run fails by itself (td_cannot_run).
# Failed tests' assertion lines are printed again after the summary, and
# the summary after them: CI keeps only the tail of the output, where the
# interleaved jobs' messages would otherwise hide which test failed.
# The counting script reads TEST_ARGS from the environment: its text, quotes
# and patterns included, cannot be pasted into a shell line safely.
#
# SAN=1: LSAN_OPTIONS names tests/lsan.supp (third-party leaks only; the
# file says why each is not tally's), inherited by every process a test
# starts.
# SAN=thread: TSAN_OPTIONS sends every process's reports to $(BUILD)/tsan/
# (a tallyd's stderr goes to a log file no one reads when its test passes),
# and any report fails the run.  The suppressions file names only
# third-party code (tests/tsan.supp says why).  Tests whose child process
# runs an engine start it with fork + exec (tests/child_util.h): TSan does
# not support threads in a child forked from a multithreaded process.
TSAN_DIR := $(abspath $(BUILD))/tsan
TEST_ENV := $(if $(filter thread,$(SAN)),TSAN_OPTIONS='log_path=$(TSAN_DIR)/report \
	second_deadlock_stack=1 suppressions=$(abspath tests/tsan.supp)') \
	$(if $(filter 1,$(SAN)),LSAN_OPTIONS='suppressions=$(abspath tests/lsan.supp) \
	print_suppressions=0')
test: export TEST_ARGS := $(TEST_ARGS)
test: deps-test deps-examples
	$(Q)$(MAKE) --no-print-directory all $(TEST_BIN) $(EXAMPLE_BIN) $(FUZZ_REPLAY)
	$(Q)rm -rf $(TSAN_DIR) && mkdir -p $(TSAN_DIR)
	$(Q){ $(TEST_ENV) TALLY_BUILD=$(abspath $(BUILD)) $(TEST_BIN) --jobs 2 $(TEST_ARGS); \
	  echo $$? > $(BUILD)/test.rc; } 2>&1 | tee $(BUILD)/test.out; \
	rc=$$(cat $(BUILD)/test.rc); \
	if grep -q '^\[FAIL\]' $(BUILD)/test.out; then \
	  echo "make test: the failures again (CI shows only the tail):"; \
	  grep '^\[FAIL\]' $(BUILD)/test.out | head -n 8; \
	  awk '/Assertion Failed/ { n = 3; print; next } \
	       n && /^\[----\] +[^ ]/ { print; n = 0; next } n { n-- }' \
	    $(BUILD)/test.out | head -n 16; \
	  grep 'Synthesis:' $(BUILD)/test.out | tail -n 1; fi; \
	if grep -q 'ERROR: LeakSanitizer' $(BUILD)/test.out; then \
	  echo "make test: LeakSanitizer reported leaks (above): failing"; rc=1; fi; \
	if [ -n "$$(ls -A $(TSAN_DIR))" ]; then cat $(TSAN_DIR)/*; \
	  echo "make test: ThreadSanitizer reports (above, from $(TSAN_DIR)): failing"; rc=1; fi; \
	want=$$(tests/expected_tests.sh $(TEST_BIN)); \
	ran=$$(sed -n 's/.*Synthesis: Tested: \([0-9]*\) .*/\1/p' $(BUILD)/test.out | tail -n 1); \
	if [ "$$ran" != "$$want" ]; then \
	  echo "make test: $${ran:-no} tests ran of the $$want defined (skipped or lost): failing"; \
	  rc=1; fi; \
	exit $$rc

# The kill -9 crash loops; CYCLES=1000 (and SEED=n to replay a run) for the
# long version.
CYCLES ?= 200
test-crash: deps-test
	$(Q)$(MAKE) --no-print-directory all $(TEST_BIN)
	TALLY_BUILD=$(abspath $(BUILD)) TALLY_CRASH_CYCLES=$(CYCLES) $(if $(SEED),TALLY_CRASH_SEED=$(SEED)) \
		$(TEST_BIN) --filter='crash*/*' $(TEST_ARGS)

# The cluster's failover tests with the issue's figures: KILLS leaders killed
# (20 or more), the time from each kill to the next acknowledged write in
# out/cluster-report.txt.  make test runs them with 3.
KILLS ?= 24
test-cluster: deps-test
	$(Q)$(MAKE) --no-print-directory all $(TEST_BIN)
	@mkdir -p out && rm -f out/cluster-report.txt
	TALLY_BUILD=$(abspath $(BUILD)) TALLY_CLUSTER_KILLS=$(KILLS) \
		TALLY_CLUSTER_REPORT=$(abspath out/cluster-report.txt) \
		$(TEST_BIN) --filter='cluster*/*' $(TEST_ARGS)
	@cat out/cluster-report.txt

bench: deps-bench
	$(Q)$(MAKE) --no-print-directory all $(PEER_BIN)
	bench/run.sh $(BENCH_ARGS)

# The cost of replication: one tallyd, then a 3-node cluster with --ack local
# and with --ack replicated, in one run (bench/cluster.sh; out/bench/cluster.txt).
bench-cluster: deps-test
	$(Q)$(MAKE) --no-print-directory all
	bench/cluster.sh $(BENCH_ARGS)

bench-peers: deps-bench
	$(Q)$(MAKE) --no-print-directory all $(PEER_BIN)
	bench/run.sh --peers $(BENCH_ARGS)

# tally import's speed: a 10M-entry ledger dumped and imported (bench/import.sh).
bench-import: deps-bench
	$(Q)$(MAKE) --no-print-directory all
	bench/import.sh $(BENCH_ARGS)

FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined -Iengine
FUZZ_SECONDS ?= 60
fuzz: deps-fuzz
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) tests/fuzz/fuzz_resp.c engine/resp.c -o build-fuzz/fuzz_resp
	clang $(FUZZ_CFLAGS) tests/fuzz/fuzz_record.c engine/record.c engine/checksum.c -o build-fuzz/fuzz_record -lxxhash
	@mkdir -p build-fuzz/corpus/resp build-fuzz/corpus/record
	# New inputs go to build-fuzz/corpus; the seeds in the repo stay as they are.
	build-fuzz/fuzz_resp -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build-fuzz/ \
		build-fuzz/corpus/resp tests/fuzz/corpus/resp
	build-fuzz/fuzz_record -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build-fuzz/ \
		build-fuzz/corpus/record tests/fuzz/corpus/record

clean:
	rm -rf build build-san build-tsan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
