#!/usr/bin/env bash
# Side by side, in one run, on the same definition (tests/fixtures/images/e2e.yaml: Debian 12
# bootstrap base, docker.io, a user, files, a script, an offline compose stack):
#   (a) a full build: `imgbuild build --backend packer` (real `packer build`, one boot) vs
#       imgbuild's native backend without the layer cache (`--no-cache`: one boot, the same
#       work as Packer's), the same again with the download cache the first left behind (as
#       every build after a machine's first has it), and with an empty layer cache (every
#       layer built in its own boot, the price of filling the cache);
#   (b) an incremental rebuild after a change to the top layer (the compose stack) vs (a);
#   (d) smoke boot to ready (TCG; KVM is probed and reported);
#   (e) the artifact sizes of (a).
# Build VMs: 2 vCPUs (the definition default), 2 GiB, TCG.
# Every build skips its own smoke (--no-smoke: the same for both); (d) smokes the artifact
# separately. The base is bootstrapped once beforehand (not timed) and shared by all. GNU time
# gives wall seconds and the peak RSS of the largest process in the tree (QEMU with its
# 2 GiB guest during builds). RUNS rounds, alternating. Writes bench/results/build.tsv and
# prints Markdown for BENCHMARKS.md.
#
#   bench/build.sh            (needs: make host-tools; builds imgbuild --release)
runs="${RUNS:-3}"
source "$(dirname "$0")/common.sh" build

layers() { # which layers the last build reused or built, and its seconds on each
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); m=j[0]["manifest"] if isinstance(j, list) else j; print("   layers:", " ".join("%s=%s" % (l["name"], "cached" if l["cached"] else "built %.0fs" % l["seconds"]) for l in m["layers"]))' "$work/out.json" | tee -a "$work/layers.txt" || true
}

warm_base e2e

printf 'what\tseconds\tmax_rss_kib\n' >"$out"
: >"$work/sizes.tsv"
for i in $(seq 1 "$runs"); do
  echo "== round $i"
  measure "a-packer-full" "$(fresh_cache p$i)" "$imgbuild" --images-dir "$images" --json build e2e \
    --backend packer --version "p$i" --out "$work/dist" --no-smoke
  printf 'packer\t%s\n' "$(stat -c %s "$work/dist/e2e/p$i/e2e-p$i-amd64.qcow2")" >>"$work/sizes.tsv"
  measure "a-imgbuild-flat" "$(fresh_cache f$i)" "$imgbuild" --images-dir "$images" --json build e2e \
    --no-cache --version "f$i" --out "$work/dist" --no-smoke
  printf 'imgbuild-flat\t%s\n' "$(stat -c %s "$work/dist/e2e/f$i/e2e-f$i-amd64.qcow2")" >>"$work/sizes.tsv"
  # The same one-boot build again on that cache: no layers are kept (--no-cache), but the
  # shared download cache (packages and package lists) is warm from the build before, as it
  # is for every build on a machine after its first. Packer has no such cache.
  measure "a-imgbuild-flat-warm" "$work/cache-f$i" "$imgbuild" --images-dir "$images" --json build e2e \
    --no-cache --version "w$i" --out "$work/dist" --no-smoke
  printf 'imgbuild-flat-warm\t%s\n' "$(stat -c %s "$work/dist/e2e/w$i/e2e-w$i-amd64.qcow2")" >>"$work/sizes.tsv"
  c="$(fresh_cache q$i)"
  measure "a-imgbuild-full" "$c" "$imgbuild" --images-dir "$images" --json build e2e \
    --version "q$i" --out "$work/dist" --no-smoke
  layers
  printf 'imgbuild-layered\t%s\n' "$(stat -c %s "$work/dist/e2e/q$i/e2e-q$i-amd64.qcow2")" >>"$work/sizes.tsv"
  # (b) the top layer changes: one more label on the stack's service.
  sed -i "s/^    mem_limit: 64m\$/    mem_limit: 64m\n    labels: {bench.round: \"$i\"}/" "$work/fx/compose/probe/compose.yaml"
  measure "b-imgbuild-incremental" "$c" "$imgbuild" --images-dir "$images" --json build e2e \
    --version "r$i" --out "$work/dist" --no-smoke
  layers
  git -C "$PWD" show HEAD:tests/fixtures/compose/probe/compose.yaml >"$work/fx/compose/probe/compose.yaml"
  # (d) smoke boot of the native artifact (TCG).
  measure "d-smoke-tcg" "$c" "$imgbuild" --images-dir "$images" --json smoke \
    "$work/dist/e2e/q$i/e2e-q$i-amd64.qcow2" --image e2e -o "$work/smoke-$i"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("   boot to ready %.1f s, accel %s, passed %s" % (r["boot_seconds"], r["accel"], r["passed"]))' "$work/out.json" \
    | tee -a "$work/boot.txt"
  rm -rf "$work/dist/e2e" "$work"/cache-p$i "$work"/cache-f$i "$work"/cache-q$i
done
kvm="$("$imgbuild" --json doctor 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["accel"] + ": " + d["accel_reason"])' 2>/dev/null || true)"

python3 - "$out" "$work/sizes.tsv" "$work/boot.txt" "$kvm" <<'PY'
import sys, statistics as st, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = collections.defaultdict(list)
for what, s, kib in rows:
    by[what].append((float(s), int(kib)))
def line(what, label):
    v = by[what]
    secs = [x[0] for x in v]; rss = [x[1] for x in v]
    return f"| {label} | {st.median(secs):.0f} | {min(secs):.0f}–{max(secs):.0f} | {st.median(rss)/1024:.0f} |"
print("| e2e definition | median wall s | min–max s | median peak RSS MiB (largest process: QEMU) |")
print("|---|---|---|---|")
print(line("a-packer-full", "Packer 1.6.6 (`--backend packer`), full build"))
print(line("a-imgbuild-flat", "imgbuild native, full build `--no-cache` (one boot)"))
print(line("a-imgbuild-flat-warm", "imgbuild native, full build `--no-cache`, downloads cached by the build before"))
print(line("a-imgbuild-full", "imgbuild native, full build with an empty layer cache (a boot per layer)"))
print(line("b-imgbuild-incremental", "imgbuild native, rebuild after a compose-stack change"))
print(line("d-smoke-tcg", "smoke boot of the artifact (TCG), whole command"))
full = st.median(x[0] for x in by["a-imgbuild-full"]); inc = st.median(x[0] for x in by["b-imgbuild-incremental"])
pk = st.median(x[0] for x in by["a-packer-full"])
flat = st.median(x[0] for x in by["a-imgbuild-flat"])
warm = st.median(x[0] for x in by["a-imgbuild-flat-warm"])
print(f"\nincremental / layered full = {inc/full:.0%}; incremental / flat full = {inc/flat:.0%}; "
      f"imgbuild flat / Packer = {flat/pk:.2f}; imgbuild flat, downloads cached / Packer = {warm/pk:.2f}; "
      f"imgbuild layered / Packer = {full/pk:.2f}")
sizes = collections.defaultdict(list)
for l in open(sys.argv[2]):
    k, v = l.split(); sizes[k].append(int(v))
print("artifact size MiB (median): " + ", ".join(f"{k} {st.median(v)/1048576:.0f}" for k, v in sizes.items()))
print("boot to ready: " + "; ".join(l.strip() for l in open(sys.argv[3])))
print(f"KVM: {sys.argv[4]}")
PY
echo "per-layer seconds (layered full, then incremental, per round):"
cat "$work/layers.txt"
