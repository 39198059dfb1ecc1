#!/usr/bin/env bash
# Prints how many tests a run of the test binary should execute: every test
# it defines (`--list`), narrowed by a --filter in $TEST_ARGS the way
# Criterion narrows it (an extended shell pattern on suite/name).  make test
# compares this with Criterion's "Tested: N", which leaves skipped tests out.
set -euo pipefail
bin=$1
pattern='*'
set -f
# shellcheck disable=SC2086 # TEST_ARGS is a list of words, as make passes it
set -- ${TEST_ARGS:-}
set +f
while [ $# -gt 0 ]; do
    case $1 in
        --filter=*) pattern=${1#--filter=} ;;
        --filter) shift; pattern=${1:-*} ;;
    esac
    shift
done
# Quotes typed around the pattern on make's command line reach us as text.
pattern=${pattern#[\'\"]}
pattern=${pattern%[\'\"]}
shopt -s extglob
n=0
while IFS= read -r name; do
    # shellcheck disable=SC2053 # the pattern is meant to match
    [[ $name == $pattern ]] && n=$((n + 1))
done < <("$bin" --list | awk '/^[^ │├└]/ { suite = $1; sub(/:$/, "", suite); next }
                              { print suite "/" $2 }')
echo "$n"
