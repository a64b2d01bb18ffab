#!/usr/bin/env bash
# `make test` on a machine kept busy: starts N CPU-bound processes (default 2, one per core of the CI
# machine), runs `make test`, stops them however the run ends (they are killed by their own pids, from a
# trap) and exits with the tests' exit code.
set -u
count=${1:-2}
busy=()
stop_busy() {
    for pid in "${busy[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${busy[@]}"; do
        wait "$pid" 2>/dev/null
    done
}
trap stop_busy EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$count"); do
    (while :; do :; done) &
    busy+=("$!")
done
echo "test-loaded: ${#busy[@]} CPU-bound processes running beside the tests (pids ${busy[*]})"
start=$(date +%s)
"${MAKE:-make}" test
status=$?
echo "test-loaded: make test exited $status after $(( $(date +%s) - start )) s with ${#busy[@]} busy processes"
exit "$status"
