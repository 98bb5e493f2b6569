#!/usr/bin/env bash
# Issue 18 (faster builds), side by side in one run, on the same small definition
# (tests/fixtures/images/e2e-par-a.yaml: Debian 12 bootstrap base, the base's upgrade and
# apt configuration in the `features` layer; files, a user and the image's identity in the
# `image` layer, which needs no running system):
#   (a) a full build: Packer (`--backend packer`, one boot) vs imgbuild's layered build into an
#       empty layer cache (both layers boot-free on the bootstrap base's kernel) vs imgbuild's
#       `--no-cache` build (one boot-free payload of both layers' work);
#   (b) a rebuild after a change to the top layer (a file's content): boot-free vs the same
#       change with `build: {boot_free: false}`, on the same cache (that setting changes the
#       features layer's key too, so both layers are built, in full boots);
#   (c) a second image sharing the lower layer (e2e-par-b: the same `features`, its own
#       script): the shared layer's seconds (0 when reused) and the whole build.
# Build VMs: 2 vCPUs (the definition default), 2 GiB, TCG. Every build skips its smoke
# (--no-smoke). The base is bootstrapped once beforehand (not timed) and shared. GNU time gives
# wall seconds and the peak RSS of the largest process (QEMU). RUNS rounds, alternating.
# Writes bench/results/layers.tsv and prints Markdown for BENCHMARKS.md.
#
#   bench/layers.sh           (needs: make host-tools; builds imgbuild --release)
runs="${RUNS:-2}"
source "$(dirname "$0")/common.sh" layers

layers() { # label: the last build's layers (reused or built, boot-free or not, seconds)
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); m=j[0]["manifest"] if isinstance(j, list) else j; print("  ", sys.argv[2] + ":", " ".join("%s=%s" % (l["name"], "reused(built for %s)" % l.get("built_for") if l["cached"] else "built %.0fs %s" % (l["seconds"], "boot-free" if l.get("boot_free") else "full-boot")) for l in m["layers"]))' "$work/out.json" "$1" | tee -a "$work/layers.txt"
}

common="$work/fx/images/e2e-common.yaml"
set_hello() { # a new content for the image layer's file
  sed -i "s/^    content: \"hello from imgbuild.*\$/    content: \"hello from imgbuild $1\\\\n\"/" "$common"
  grep -q "hello from imgbuild $1" "$common"
}

warm_base e2e-par-a

printf 'what\tseconds\tmax_rss_kib\n' >"$out"
for i in $(seq 1 "$runs"); do
  echo "== round $i"
  b=(--images-dir "$images" --json build --out "$work/dist" --no-smoke)
  measure "a-packer-full" "$(fresh_cache p$i)" "$imgbuild" "${b[@]}" e2e-par-a --backend packer --version "p$i"
  measure "a-imgbuild-flat" "$(fresh_cache f$i)" "$imgbuild" "${b[@]}" e2e-par-a --no-cache --version "f$i"
  c="$(fresh_cache q$i)"
  measure "a-imgbuild-layered" "$c" "$imgbuild" "${b[@]}" e2e-par-a --version "q$i"
  layers "a layered"
  # (c) the second image on that cache: `features` is par-a's.
  measure "c-second-image" "$c" "$imgbuild" "${b[@]}" e2e-par-b --version "s$i"
  layers "c second image"
  # (b) the top layer changes, boot-free then in a full boot (alternating order per round).
  for mode in $( ((i % 2)) && echo "free full" || echo "full free"); do
    set_hello "$i-$mode"
    if [ "$mode" = full ]; then
      sed -i 's/^build:$/build:\n  boot_free: false/' "$common"
    fi
    measure "b-rebuild-$mode" "$c" "$imgbuild" "${b[@]}" e2e-par-a --version "r$i-$mode"
    layers "b rebuild ($mode)"
    sed -i '/^  boot_free: false$/d' "$common"
  done
  rm -rf "$work/dist" "$work"/cache-p$i "$work"/cache-f$i "$work"/cache-q$i
done

python3 - "$out" <<'PY'
import sys, statistics as st, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = collections.defaultdict(list)
for what, s, kib in rows:
    by[what].append((float(s), int(kib)))
def med(what):
    return st.median(x[0] for x in by[what])
def line(what, label):
    v = by[what]
    secs = [x[0] for x in v]; rss = [x[1] for x in v]
    rounds = " / ".join(f"{s:.0f}" for s in secs)
    return f"| {label} | {rounds} | **{st.median(secs):.0f}** | {st.median(rss)/1024:.0f} |"
print("| e2e-par-a / e2e-par-b | per round s | median s | median peak RSS MiB (QEMU) |")
print("|---|---|---|---|")
print(line("a-packer-full", "(a) Packer 1.6.6 (`--backend packer`), full build"))
print(line("a-imgbuild-flat", "(a) imgbuild, full build `--no-cache` (one boot-free payload)"))
print(line("a-imgbuild-layered", "(a) imgbuild, full build into an empty layer cache (both layers boot-free)"))
print(line("b-rebuild-free", "(b) imgbuild, rebuild after a top-layer change, boot-free"))
print(line("b-rebuild-full", "(b) imgbuild, the same rebuild with `boot_free: false` (both layers in full boots: the features layer's key changes with it)"))
print(line("c-second-image", "(c) imgbuild, a second image sharing the lower layer"))
pk = med("a-packer-full")
print(f"\nlayered / Packer = {med('a-imgbuild-layered')/pk:.2f}; --no-cache / Packer = {med('a-imgbuild-flat')/pk:.2f}; "
      f"rebuild boot-free / full boot = {med('b-rebuild-free')/med('b-rebuild-full'):.2f}")
PY
echo "per-layer (per round):"
cat "$work/layers.txt"
