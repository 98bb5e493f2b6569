#!/usr/bin/env bash
# Side by side on the same file of random data (default 2 GiB, under $TMPDIR, not in the repo):
#   imgbuild --json checksum FILE               one read, sha256 + sha512 + md5
#   sha256sum FILE; sha512sum FILE; md5sum FILE  coreutils, in sequence
#   cat FILE > /dev/null                        the read alone
# Warm page cache: each command once to warm up, then RUNS alternating rounds. Cold: the file's
# pages are dropped before every run with posix_fadvise(POSIX_FADV_DONTNEED) (no root needed
# for a file we own; fincore checks that nothing stayed resident), RUNS_COLD rounds.
# GNU time gives wall seconds and peak RSS. Writes bench/results/digest.tsv and prints the
# machine and a Markdown table for BENCHMARKS.md.
#
#   bench/digest.sh            (builds imgbuild --release)
#   RUNS=5 RUNS_COLD=5 SIZE_MIB=2048 FILE=/path/to/existing/file bench/digest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-5}"
runs_cold="${RUNS_COLD:-5}"
size_mib="${SIZE_MIB:-2048}"
cargo build --release --locked -q
imgbuild="$PWD/target/release/imgbuild"
work="$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-bench-digest-XXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results
out="bench/results/digest.tsv"

if [ -n "${FILE:-}" ]; then
  file="$FILE"
  size_mib=$(( $(stat -c %s "$file") / 1048576 ))
else
  file="$work/data.bin"
  head -c "${size_mib}M" /dev/urandom >"$file"
fi
bytes=$(stat -c %s "$file")

quiet() { # no VM running and (nearly) idle CPUs, for the record
  if pgrep -f qemu-system >/dev/null; then echo "no: a qemu-system process is running"
  else echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"; fi
}
before="$(quiet)"

drop() { # the file's pages out of the page cache, checked
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$file"
  local res
  res=$(fincore --bytes --noheadings --output RES "$file" | tr -d ' ')
  [ "$res" -lt 1048576 ] || { echo "still $res bytes of $file in the page cache" >&2; exit 1; }
}

run_imgbuild() { "$imgbuild" --json checksum "$file"; }
run_coreutils() { sha256sum "$file"; sha512sum "$file"; md5sum "$file"; }
run_cat() { cat "$file" >/dev/null; }
export -f run_imgbuild run_coreutils run_cat
export imgbuild file

measure() { # cache tool
  local tf="$work/time.txt"
  [ "$1" = cold ] && drop
  /usr/bin/time -f '%e %M' -o "$tf" bash -c "run_$2" >"$work/$2.out" 2>"$work/err.txt" \
    || { cat "$work/err.txt"; exit 1; }
  read -r secs kib <"$tf"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$secs" "$kib" | tee -a "$out" >&2
}

printf 'cache\ttool\tseconds\tmax_rss_kib\n' >"$out"
tools=(imgbuild coreutils cat)
# Warm-up (not recorded), then alternate the order round by round.
for t in "${tools[@]}"; do bash -c "run_$t" >"$work/$t.out"; done
# The digests must agree before any figure counts.
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
d = json.load(open(f"{w}/imgbuild.out"))[0]
lines = [l.split()[0] for l in open(f"{w}/coreutils.out")]
assert lines == [d["sha256"], d["sha512"], d["md5"]], (lines, d)
PY
for i in $(seq 1 "$runs"); do
  if [ $((i % 2)) = 1 ]; then order=(imgbuild coreutils cat); else order=(cat coreutils imgbuild); fi
  for t in "${order[@]}"; do measure warm "$t"; done
done
for i in $(seq 1 "$runs_cold"); do
  if [ $((i % 2)) = 1 ]; then order=(imgbuild coreutils cat); else order=(cat coreutils imgbuild); fi
  for t in "${order[@]}"; do measure cold "$t"; done
done

# The machine, for the record.
echo "- CPU: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), hashing flags:" \
  "$(grep -m1 -o -w -E 'sha_ni|avx2|avx512f|bmi2|ssse3' /proc/cpuinfo | tr '\n' ' ')"
echo "- $(free -g | awk '/^Mem:/{print $2}') GiB RAM, kernel $(uname -r)," \
  "file system $(df --output=source,fstype "$file" | tail -1 | tr -s ' '), disk:" \
  "$(dev=$(basename "$(df --output=source "$file" | tail -1)")
     echo "$dev $(lsblk -dno SIZE "/dev/$dev" 2>/dev/null | tr -d ' ')" \
       "$(basename "$(readlink -f "/sys/block/$dev/device/driver" 2>/dev/null)" 2>/dev/null)" \
       "rotational=$(cat "/sys/block/$dev/queue/rotational" 2>/dev/null)")"
echo "- $(sha256sum --version | head -1), $(rustc --version), imgbuild $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
echo "- file: ${size_mib} MiB of /dev/urandom, ${runs} warm rounds, ${runs_cold} cold rounds"
echo "- quiet machine: before: ${before}; after: $(quiet)"
echo
python3 - "$out" "$bytes" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
mib = int(sys.argv[2]) / 1048576
def col(cache, tool, k): return [float(r[k]) for r in rows if r["cache"] == cache and r["tool"] == tool]
labels = {"imgbuild": "`imgbuild --json checksum F` (sha256+sha512+md5, one read)",
          "coreutils": "`sha256sum F; sha512sum F; md5sum F`",
          "cat": "`cat F > /dev/null`"}
print(f"| {mib:.0f} MiB file | page cache | median wall s | min–max s | MiB/s | median peak RSS MiB |")
print("|---|---|---|---|---|---|")
med = {}
for cache in ("warm", "cold"):
    for tool in ("imgbuild", "coreutils", "cat"):
        s, m = col(cache, tool, "seconds"), col(cache, tool, "max_rss_kib")
        if not s:
            continue
        med[cache, tool] = statistics.median(s)
        print(f"| {labels[tool]} | {cache} | {med[cache, tool]:.2f} | {min(s):.2f}–{max(s):.2f} "
              f"| {mib / med[cache, tool]:.0f} | {statistics.median(m) / 1024:.0f} |")
print()
for cache in ("warm", "cold"):
    if (cache, "imgbuild") not in med:
        continue
    i, c, k = med[cache, "imgbuild"], med[cache, "coreutils"], med[cache, "cat"]
    print(f"- {cache}: imgbuild is {c / i:.2f}× the speed of the coreutils sequence (target ≥ 2: "
          f"{'met' if c / i >= 2 else 'not met'}), {k / i:.2f}× the speed of cat (target ≥ 0.8: "
          f"{'met' if k / i >= 0.8 else 'not met'})")
PY
