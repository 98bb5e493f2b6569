#!/usr/bin/env bash
# A second CI runner with the remote cache vs without (issue 19), on the Debian desktop twin
# (images/debian12-desktop-ai.yaml), in one run on this machine: Swift with its S3 API on
# 127.0.0.1 (scripts/s3-test-stack.sh) as the site's object store.
#   without   a runner with an empty cache builds the image (mmdebstrap base, layers)
#   upload    that runner, given the remote, shares what it has (every entry uploaded)
#   with      a second runner with an empty cache builds it with the remote (all fetched)
# Each --no-smoke (the smoke boot is the same either way). Results: bench/results/remote.tsv.
#   bench/remote.sh [IMAGE]   (a catalog image or a test fixture such as e2e-par-a)
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-debian12-desktop-ai}"
source bench/common.sh remote
s3_store bench
remote=s3://bench/site

echo "# $(date -u +%FT%TZ) $image, $(nproc) cores, commit $(git rev-parse --short HEAD)" | tee -a "$out"
# The catalog's images, or the test fixtures' (bench/common.sh copies them to $images).
dir="$PWD/images"
[ -f "$images/$image.yaml" ] && dir="$images"
run() { # label cache [remote]
  local label=$1 cache=$2; shift 2
  measure "$label" "$cache" "$imgbuild" -q --json --images-dir "$dir" build "$image" --no-smoke --version "$label" \
    --out "$work/dist" "$@"
}
a="$work/cache-a"; b="$work/cache-b"
mkdir -p "$a" "$b"
run without "$a"
run upload "$a" --cache-remote "$remote"
run with "$b" --cache-remote "$remote"
# The second runner's manifest: base and every layer fetched, nothing built.
jq -c '{accel, base_remote: .base.remote, layers: [.layers[] | {name, cached, remote}]}' "$work/out.json" | tee -a "$out"
