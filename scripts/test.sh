#!/usr/bin/env bash
# `make test`: every test of the crate, in two streams side by side. In the foreground: the
# unit tests and the e2e tier with two test threads (real builds and boots). In the
# background, one after the other: the desktop twin's end-to-end test (a desktop built and
# smoke-booted under TCG, the longest test by far, much of it waiting on downloads), then the
# openstack tier (a real Keystone and Glance) and the tool-free tier, which need little CPU
# beside the e2e tier's VMs. The background runs the test binaries directly (no second cargo
# holding the build lock); its output lands in target/background-tests.log and is printed at
# the end. The exit code is non-zero if either stream failed.
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
bin() {
  local b
  b=$(awk -v t="$1" '$1 == t {print $2}' <<<"$bins")
  if [ -z "$b" ]; then
    echo "scripts/test.sh: no $1 test binary in: $bins" >&2
    exit 1
  fi
  echo "$b"
}
e2e=$(bin e2e) || exit 1
openstack=$(bin openstack) || exit 1
tool_free=$(bin tool_free) || exit 1

mkdir -p target
log=target/background-tests.log
echo "== in the background: desktop_e2e, then the openstack and tool-free tiers (log: $log)"
(
  failed=0
  echo "== desktop_e2e"
  "$e2e" --exact "$DESKTOP_TEST" || failed=1
  echo "== openstack tier"
  "$openstack" --test-threads=2 || failed=1
  echo "== tool-free tier"
  "$tool_free" || failed=1
  exit $failed
) >"$log" 2>&1 &
background_pid=$!
# A stopped `make test` stops the background tests too.
trap 'pkill -TERM -P "$background_pid" 2>/dev/null; kill -TERM "$background_pid" 2>/dev/null' INT TERM EXIT

"$CARGO" test --locked --lib --bins --test e2e -- --test-threads=2 --skip "$DESKTOP_TEST"
rest=$?

wait "$background_pid"
background=$?
trap - INT TERM EXIT
echo "== background tests (exit $background):"
cat "$log"
if [ "$rest" -ne 0 ] || [ "$background" -ne 0 ]; then
  echo "== tests failed: the foreground exited $rest, the background exited $background" >&2
  exit 1
fi
