#!/usr/bin/env bash
# The world tier: the main session (SQLite worlds) and the PostgreSQL session side by side.
#
# Each session starts its own worlds (free ports, folders of their own) and stops them by PID; much of
# a campaign waits on a conveyor or a subprocess's start, so the two together take far less than one
# after the other on two cores. The PostgreSQL session's output is kept in a log and printed after the
# main session's; the tier fails if either does. A SIGTERM or Ctrl-C stops both.
# Arguments: the PostgreSQL session's test files (the Makefile's POSTGRESQL_TESTS).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .test-logs
pg_log=.test-logs/postgresql.log
if [ "$#" -eq 0 ]; then
    echo "usage: $0 POSTGRESQL_TEST_FILE..." >&2
    exit 2
fi
.venv/bin/python -m pytest --db postgresql "$@" >"$pg_log" 2>&1 &
pg=$!
trap 'kill -TERM "$pg" 2>/dev/null; wait "$pg"; exit 130' INT TERM
.venv/bin/python -m pytest tests --ignore=tests/unit
main=$?
wait "$pg"
pgrc=$?
trap - INT TERM
echo "=== the PostgreSQL session (beside the main one; its log: $pg_log) ==="
cat "$pg_log"
echo "=== world tier: main session exit $main, PostgreSQL session exit $pgrc ==="
if [ "$main" -ne 0 ] || [ "$pgrc" -ne 0 ]; then
    exit 1
fi
