#!/usr/bin/env bash
# Transitions per second of Tern States (release build; in memory and durable in SQLite) side by
# side with aws-local-stepfunctions (npm) on the same definitions: loop.asl.json (10,000-iteration
# Pass/Choice loop) and map.asl.json (Map over 10,000 items, MaxConcurrency 40).
# Usage: bench/states/run.sh   (ROUNDS=n to change the best-of count, default 3)
set -euo pipefail
cd "$(dirname "$0")"
export ROUNDS="${ROUNDS:-3}"
[ -d node_modules ] || npm ci --no-audit --no-fund >/dev/null
tern_results="$(mktemp)"
trap 'rm -f "$tern_results"' EXIT
(cd ../.. && cargo bench -q -p tern-states --bench states) >"$tern_results"
node run.mjs "$ROUNDS" "$tern_results"
