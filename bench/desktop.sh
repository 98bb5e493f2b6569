#!/usr/bin/env bash
# The Debian desktop twin (images/debian12-desktop-ai.yaml), what issues 18 and 19 ask of it,
# in one run on this machine (TCG):
#   full          a full build from an empty cache: mmdebstrap base, layers, smoke (issue 18's
#                 target: <= 25 min)
#   stack-change  a change to the compose stack (one variable in compose.yaml), rebuilt on that
#                 cache without smoke: only the stack layer is made (target: <= 30 s of
#                 provisioning; the layer's own seconds are printed from the manifest)
#   second-image  an image extending the twin by one script (debian12-desktop-ai-extra): the
#                 twin's layers reused, 0 s each
#   upload        the first runner, given the remote cache, shares its base and layers (Swift
#                 with its S3 API on 127.0.0.1, scripts/s3-test-stack.sh)
#   with-remote   a second runner with an empty cache builds the twin with the remote cache
#                 (issue 19: compare with `full` less its smoke)
#   layered-from-base, packer  with PACKER=1: imgbuild's layered build into an empty layer
#                 cache, then `--backend packer` on the same definition (one boot), both from
#                 the same (cached) base, no smoke
#   booted-setup, stack-change-booted  with BEFORE=1: issue 18's "before", measured: the twin
#                 with `build: {boot_free: false}` (every layer in a full boot, as before the
#                 issue) is built on the same cache (not compared), then the same stack change
#                 is rebuilt that way
# Results: bench/results/desktop.tsv (label, wall seconds, peak RSS KiB of the largest process)
# and the layers of each build.
#   bench/desktop.sh          (needs: make host-tools; ~35 min, ~45 with PACKER=1, ~25 more
#                             with BEFORE=1)
set -euo pipefail
source "$(dirname "$0")/common.sh" desktop
image=debian12-desktop-ai

# The catalog and its compose projects, copied: the benchmark edits them.
cp -a images "$work/images"
cp -a compose "$work/compose"
dir="$work/images"
cat >"$dir/$image-extra.yaml" <<'EOF'
extends: debian12-desktop-ai
description: The desktop twin and one more script (bench/desktop.sh, a second image)
scripts:
  - name: extra-marker
    offline: true
    run: echo "a second image" > /etc/imgbuild-extra
EOF
cat >"$dir/$image-booted.yaml" <<'EOF'
extends: debian12-desktop-ai
description: The desktop twin with every layer in a full boot (bench/desktop.sh, issue 18's before)
build:
  boot_free: false
EOF

s3_store bench
remote=s3://bench/desktop

layers() { # label: the last build's base and layers (reused or built, boot-free or not, seconds)
  python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
if "layers" not in m:  # the Packer backend: one boot, no layers
    print("  %s: base %s; one boot (%s)" % (sys.argv[2], m["base"]["kind"], m.get("backend", "packer")))
    sys.exit(0)
ls = " ".join("%s=%s" % (l["name"], ("fetched" if l.get("remote") else "reused") if l["cached"]
              else "built %.0fs %s" % (l["seconds"], "boot-free" if l.get("boot_free") else "full-boot"))
              for l in m["layers"])
smoke = m.get("smoke") or {}
print("  %s: base %s%s; %s%s" % (sys.argv[2], m["base"]["kind"], " (remote)" if m["base"].get("remote") else "",
      ls, "; smoke %s checks in %.0f s" % (smoke.get("checks"), smoke.get("boot_seconds", 0)) if smoke else ""))' "$work/out.json" "$1" | tee -a "$work/layers.txt"
}
b() { # label cache args...: a build of the twin (or the given image) into $work/dist
  local label=$1 cache=$2; shift 2
  measure "$label" "$cache" "$imgbuild" -q --json --images-dir "$dir" build --version "$label" --out "$work/dist" "$@"
  layers "$label"
}

echo "# $(date -u +%FT%TZ) $image, $(nproc) cores, commit $(git rev-parse --short HEAD)" | tee -a "$out"
a="$work/cache-a"; c="$work/cache-b"
mkdir -p "$a" "$c"
b full "$a" "$image"
if [ "${BEFORE:-0}" = 1 ]; then
  # Its layers in full boots on the same base, before the change (not compared).
  b booted-setup "$a" "$image-booted" --no-smoke
fi
# The stack changes: Ollama keeps models loaded longer (one variable of one service).
sed -i 's/^      OLLAMA_HOST: 0.0.0.0:11434$/      OLLAMA_HOST: 0.0.0.0:11434\n      OLLAMA_KEEP_ALIVE: 10m/' \
  "$work/compose/ai-stack/compose.yaml"
grep -q 'OLLAMA_KEEP_ALIVE: 10m' "$work/compose/ai-stack/compose.yaml"
b stack-change "$a" "$image" --no-smoke
if [ "${BEFORE:-0}" = 1 ]; then
  b stack-change-booted "$a" "$image-booted" --no-smoke
fi
b second-image "$a" "$image-extra" --no-smoke
b upload "$a" "$image" --no-smoke --cache-remote "$remote"
b with-remote "$c" "$image" --no-smoke --cache-remote "$remote"
if [ "${PACKER:-0}" = 1 ]; then
  # Side by side from the same cached base, no smoke: imgbuild's layers into an empty layer
  # cache, then Packer's one boot.
  l="$work/cache-l"
  mkdir -p "$l"
  ln -s "$a/bootstrap" "$l/bootstrap"
  b layered-from-base "$l" "$image" --no-smoke
  b packer "$a" "$image" --no-smoke --backend packer
fi
echo "layers:"
cat "$work/layers.txt"
