#!/usr/bin/env bash
# `make test`: every test of the crate, in five streams side by side, so that the longest
# tests start at once instead of one of them ending the run alone on one core:
# - the foreground: the unit tests and the e2e tier with two test threads (real builds and
#   boots), without the tests below;
# - the desktop stream: the desktop twin's end-to-end test (a desktop built and smoke-booted
#   under TCG, the longest test by far);
# - the arm64 stream: the arm64 test (an arm64 bootstrap through qemu-user and two emulated
#   boots, the second longest), then the parallel-build tests (they hold the e2e binary's VM
#   lock alone, so in the foreground they waited for the layered build test and ran last);
# - the Kolla stream: the Kolla twin's end-to-end test (its build, smoke and kolla-ansible's
#   prechecks in the lab shape), then the Packer backend's (a Packer build and one smoke boot);
# - the tiers stream: the openstack tier (a real Keystone and Glance) and the tool-free tier,
#   no VMs.
# The e2e tests that build or boot take one of the run's VM slots first (tests/e2e/main.rs
# `vm_slots`: as many as the host has cores), so at most that many build VMs and bootstraps run
# at once whichever stream they are in: the run of 2026-11-30 16:16 had five TCG guests and two
# native bootstraps on two cores, and guests starved that long overran their own give-up
# limits. The desktop and arm64 streams start first and take the first slots (longest first);
# the others start when they hold them. Who waited for whom is in target/test-vm-slots/log,
# printed at the end.
# The e2e tests compile first, while the venvs and gitlab-ci-local install; the desktop and
# arm64 streams start as soon as they and the validators' venv are there, the others once the
# rest has compiled and installed.
# The background streams run the test binaries directly (no second cargo holding the build
# lock); their output lands in target/{desktop,arm64,kolla,tiers}-tests.log and is printed at
# the end. Every line of every stream carries the time it was printed, so that a slow run
# shows which test took it. The exit code is non-zero if any stream failed.
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
DESKTOP_TEST=desktop_e2e::debian_desktop_twin_builds_and_boots_to_a_vnc_desktop_for_the_launch_user
KOLLA_TEST=kolla_e2e::debian_kolla_twin_in_the_lab_shape_passes_kolla_ansibles_prechecks
PACKER_TEST=build_e2e::packer_backend_builds_the_same_definition_and_it_passes_the_same_smoke
ARM64_TEST=arm64_e2e::debian12_base_builds_for_arm64_boots_under_tcg_and_passes_its_smoke
# The parallel-build tests hold the e2e binary's VM lock alone: in the foreground they waited
# for its longest test, the layered build, and ran last.
PARALLEL_TESTS=parallel_e2e::

mkdir -p target
# One vCPU per build and smoke VM (src/host.rs vm_cpu_limit): as many VMs as VM slots, as many
# slots as cores. The definitions' `build.cpus: 2` gave the arm64 and smoke VMs two busy
# threads each (the 18:07 run: two VMs, three vCPUs, two cores).
export IMGBUILD_VM_CPUS=1
# Each e2e build's whole output (tests/common keep_build_log); summed up at the end.
rm -rf target/e2e-logs target/test-vm-slots
echo "== scripts/test.sh starts at $(date +%T): compiling the tests, installing the test tools"
# The validators' venv, the test stacks' venvs and gitlab-ci-local (`make host-tools` but the
# apt packages, which the Makefile's `test` installs first): mostly downloads, made while cargo
# compiles the tests instead of before (minutes of a CI run).
tools_log=target/tools-install.log
# The validators' venv first: the desktop and arm64 tests need it (a build validates what it
# renders) and nothing else of these; they start when it and the e2e binary are there.
( "${MAKE:-make}" venv && "${MAKE:-make}" -j4 openstack-venv kolla-venv s3-venv gitlab-ci-local ) >"$tools_log" 2>&1 &
tools=$!

# compile [CARGO TEST ARGS]: the test binaries those arguments select, as "target executable"
# lines (the harness runs them directly).
compile() {
  "$CARGO" test --locked --no-run --message-format=json "$@" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
  return "${PIPESTATUS[0]}"
}
# bin NAME: the executable of test target NAME in $bins.
bin() {
  local b
  b=$(awk -v t="$1" '$1 == t {print $2}' <<<"$bins")
  if [ -z "$b" ]; then
    echo "scripts/test.sh: no $1 test binary in: $bins" >&2
    exit 1
  fi
  echo "$b"
}
tools_failed() {
  cat "$tools_log" >&2
  echo "scripts/test.sh: installing the test tools failed (log above: $tools_log)" >&2
  exit 1
}

# The e2e binary (and the imgbuild binary it runs) first: the desktop and arm64 tests are the
# run's longest, and their bootstraps begin with minutes of downloads from Debian's archive,
# which go on while the other test binaries compile and the other venvs install (on a fresh
# CI machine pip builds and downloads for minutes: the streams waited for all of it before).
bins=$(compile --test e2e) || { echo "scripts/test.sh: the e2e tests do not compile" >&2; exit 1; }
e2e=$(bin e2e) || exit 1
until [ -e .venv/.installed ]; do
  kill -0 "$tools" 2>/dev/null || [ -e .venv/.installed ] || tools_failed
  sleep 1
done
echo "== the e2e tests compiled and the validators installed at $(date +%T)"
# Each line with the wall-clock time it came (libtest prints a test's line when it ends).
stamp() {
  local l
  while IFS= read -r l; do
    printf '[%(%H:%M:%S)T] %s\n' -1 "$l"
  done
}

# The CPU time a stream's processes used (QEMU's among them: `times` counts every waited-for
# descendant), in core-minutes: the run is CPU-bound on two cores, so these say where to cut.
cpu_time() {
  local f
  f=$(mktemp)
  times >"$f" # a builtin in this shell: in a pipe or $(...) it would count a subshell's
  awk -v s="$1" 'NR == 2 {
    split($1, u, /[ms]/); split($2, y, /[ms]/)
    printf "== CPU of %s: %.1f core-minutes (user %s, system %s)\n", s, u[1] + u[2] / 60 + y[1] + y[2] / 60, $1, $2
  }' "$f"
  rm -f "$f"
}

desktop_log=target/desktop-tests.log
arm64_log=target/arm64-tests.log
kolla_log=target/kolla-tests.log
tiers_log=target/tiers-tests.log
desktop_stream() {
  local failed=0
  echo "== desktop_e2e"
  "$e2e" --exact "$DESKTOP_TEST" || failed=1
  cpu_time "the desktop stream"
  return $failed
}
arm64_stream() {
  local failed=0
  echo "== arm64"
  "$e2e" --exact "$ARM64_TEST" || failed=1
  echo "== parallel builds"
  "$e2e" --test-threads=1 "$PARALLEL_TESTS" || failed=1
  cpu_time "the arm64 and parallel stream"
  return $failed
}
kolla_stream() {
  local failed=0
  echo "== kolla_e2e"
  "$e2e" --exact "$KOLLA_TEST" || failed=1
  echo "== packer backend"
  "$e2e" --exact "$PACKER_TEST" || failed=1
  cpu_time "the kolla and packer stream"
  return $failed
}
tiers_stream() {
  local failed=0
  echo "== openstack tier"
  # One test at a time: the tests share one Glance on SQLite, and some write its database
  # themselves (fault triggers); two at once made Glance's `database is locked` strand an
  # image in `saving` (the run of 2026-11-30 19:40).
  "$openstack" --test-threads=1 || failed=1
  echo "== tool-free tier"
  "$tool_free" || failed=1
  cpu_time "the tiers stream"
  return $failed
}
# start_stream LOG FUNCTION: FUNCTION in the background, its output time-stamped into LOG.
start_stream() {
  ( "$2" 2>&1 | stamp; exit "${PIPESTATUS[0]}" ) >"$1" &
}
# wait_for_slots N: until N tests hold a VM slot (at most a minute: a test that fails before
# its slot must not stop the run).
wait_for_slots() {
  local i n
  for i in $(seq 60); do
    n=$(grep -c ' has ' target/test-vm-slots/log 2>/dev/null)
    [ "${n:-0}" -ge "$1" ] && return 0
    sleep 1
  done
}
# A stopped `make test` stops the background tests too: every process below each stream
# (test binaries, imgbuild, QEMU) gets SIGTERM.
desktop_pid= arm64_pid= kolla_pid= tiers_pid=
descendants() {
  local c
  for c in $(pgrep -P "$1"); do
    descendants "$c"
    echo "$c"
  done
}
stop_background() {
  local p
  for p in $desktop_pid $arm64_pid $kolla_pid $tiers_pid; do
    kill -TERM $(descendants "$p") "$p" 2>/dev/null
  done
}
trap stop_background INT TERM EXIT
echo "== in the background: desktop_e2e (log: $desktop_log)"
start_stream "$desktop_log" desktop_stream
desktop_pid=$!
echo "== in the background: the arm64 test, then the parallel-build tests (log: $arm64_log)"
start_stream "$arm64_log" arm64_stream
arm64_pid=$!

# The other test binaries and test tools, while those two download and bootstrap.
bins=$(compile) || { echo "scripts/test.sh: the tests do not compile" >&2; exit 1; }
openstack=$(bin openstack) || exit 1
tool_free=$(bin tool_free) || exit 1
wait "$tools" || tools_failed
echo "== every test compiled and every test tool installed at $(date +%T)"
wait_for_slots 2
echo "== in the background: kolla_e2e, then the Packer backend's test (log: $kolla_log)"
start_stream "$kolla_log" kolla_stream
kolla_pid=$!
echo "== in the background: the openstack and tool-free tiers (log: $tiers_log)"
start_stream "$tiers_log" tiers_stream
tiers_pid=$!

# --no-fail-fast: a failed unit test must not keep the e2e tests from running (the run of
# 2026-11-30 18:46 lost its foreground e2e tests to one).
"$CARGO" test --locked --no-fail-fast --lib --bins --test e2e -- --test-threads=2 \
  --skip "$DESKTOP_TEST" --skip "$KOLLA_TEST" --skip "$PACKER_TEST" --skip "$ARM64_TEST" --skip "$PARALLEL_TESTS" 2>&1 | stamp | tee target/foreground-tests.log
rest=${PIPESTATUS[0]}

wait "$desktop_pid"
desktop=$?
wait "$arm64_pid"
arm64=$?
wait "$kolla_pid"
kolla=$?
wait "$tiers_pid"
tiers=$?
trap - INT TERM EXIT
# The main shell's children: every stream (reaped when they end), the compile, the tools and
# the foreground; the foreground's own is this less the four streams' (a figure printed right
# after the foreground counted the streams that had ended by then).
cpu_time "the whole run (the compile, the test tools, the foreground and every stream)"
echo "== desktop test (exit $desktop):"
cat "$desktop_log"
echo "== arm64 and parallel-build tests (exit $arm64):"
cat "$arm64_log"
echo "== kolla and packer tests (exit $kolla):"
cat "$kolla_log"
echo "== openstack and tool-free tiers (exit $tiers):"
cat "$tiers_log"
echo "== who waited for a VM slot, and how long (target/test-vm-slots/log)"
cat target/test-vm-slots/log 2>/dev/null
# The stages and layers of every e2e build and how long each took, and (a CI log shows the end of the
# output) the start of every failed test's message, which leads with its cause.
echo "== the e2e builds' stages (whole outputs: target/e2e-logs); $(df -h --output=avail target | tail -n 1 | tr -d ' ') free now on target's disk"
for f in target/e2e-logs/*.log; do
  [ -e "$f" ] || continue
  echo "-- $(basename "$f" .log)"
  grep -E '^\[ *[0-9.]+s\] ((ok  |FAIL) |layer [0-9]+/[0-9]+ )' "$f"
done
for f in target/foreground-tests.log "$desktop_log" "$arm64_log" "$kolla_log" "$tiers_log"; do
  if grep -q "panicked at" "$f"; then
    echo "== failed in $f (the start of each message):"
    grep -A 30 "panicked at" "$f"
  fi
done
if [ "$rest" -ne 0 ] || [ "$desktop" -ne 0 ] || [ "$arm64" -ne 0 ] || [ "$kolla" -ne 0 ] || [ "$tiers" -ne 0 ]; then
  echo "== tests failed: the foreground exited $rest, the desktop $desktop, arm64 $arm64, kolla $kolla, the tiers $tiers" >&2
  exit 1
fi
