#!/usr/bin/env bash
# `make test`: every test of the crate. The desktop twin's end-to-end test (a desktop built and
# smoke-booted under TCG, the longest test by far, much of it waiting on downloads) runs beside
# the rest instead of after it: the e2e tier's binary is started directly for that one test (no
# second cargo holding the build lock), its output kept in target/desktop-e2e.log and printed
# at the end; the rest of the suite (every tier) skips it. The exit code is non-zero if either
# run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
DESKTOP_TEST=desktop_e2e::debian_desktop_twin_builds_and_boots_to_a_vnc_desktop_for_the_launch_user

set -e
bins=$("$CARGO" test --locked --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"], m["executable"])
')
set +e
desktop=$(awk '$1 == "e2e" {print $2}' <<<"$bins")
if [ -z "$desktop" ]; then
  echo "scripts/test.sh: no e2e test binary in: $bins" >&2
  exit 1
fi

mkdir -p target
log=target/desktop-e2e.log
echo "== desktop_e2e runs in the background: $desktop (log: $log)"
"$desktop" --exact "$DESKTOP_TEST" >"$log" 2>&1 &
desktop_pid=$!
# A stopped `make test` stops the background test too (its imgbuild stops its QEMU on SIGTERM).
trap 'kill -TERM "$desktop_pid" 2>/dev/null' INT TERM EXIT

"$CARGO" test --locked -- --test-threads=2 --skip "$DESKTOP_TEST"
rest=$?

wait "$desktop_pid"
desk=$?
trap - INT TERM EXIT
echo "== desktop_e2e (exit $desk):"
cat "$log"
if [ "$rest" -ne 0 ] || [ "$desk" -ne 0 ]; then
  echo "== tests failed: the suite exited $rest, desktop_e2e exited $desk" >&2
  exit 1
fi
