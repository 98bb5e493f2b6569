#!/usr/bin/env bash
# Side by side: `imgbuild publish` and `openstack image create --file` uploading the same
# 1 GiB qcow2 to the same Glance (the real Keystone + Glance of scripts/openstack-test-stack.sh
# on 127.0.0.1), wall time and peak RSS from GNU time, RUNS rounds each, alternating.
# Writes bench/results/publish.tsv and prints a Markdown table for BENCHMARKS.md.
#
#   bench/publish.sh            (needs: make host-tools; builds imgbuild --release)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
size_mib="${SIZE_MIB:-1024}"
venv="$PWD/target/openstack-venv"
bash scripts/openstack-test-stack.sh install "$venv"
cargo build --release --locked -q
imgbuild="$PWD/target/release/imgbuild"
work="$(mktemp -d "$PWD/target/bench-publish-XXXX")"
mkdir -p bench/results
out="bench/results/publish.tsv"

kport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
gport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
pw="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
OS_TEST_ADMIN_PASSWORD="$pw" KEYSTONE_PORT=$kport GLANCE_PORT=$gport \
  bash scripts/openstack-test-stack.sh start "$venv" "$work/state" >"$work/stack.log" 2>&1 &
stack_pid=$!
trap 'kill $stack_pid 2>/dev/null; wait $stack_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do grep -q READY "$work/stack.log" && break; sleep 1; done
grep -q READY "$work/stack.log" || { cat "$work/stack.log"; exit 1; }

# The artifact: SIZE_MIB of random data as qcow2 (incompressible, so both send every byte),
# in a dist folder with the manifest `build` writes.
dist="$work/dist"; dir="$dist/debian12-base/bench"; mkdir -p "$dir"
head -c "${size_mib}M" /dev/urandom >"$work/data.raw"
qemu-img convert -q -f raw -O qcow2 "$work/data.raw" "$dir/debian12-base-bench-amd64.qcow2"
rm -f "$work/data.raw"
artifact="$dir/debian12-base-bench-amd64.qcow2"
"$imgbuild" --json checksum "$artifact" >"$work/digests.json"
python3 - "$work/digests.json" "$dir/manifest.json" "$artifact" <<'PY'
import json, sys, os
d = json.load(open(sys.argv[1]))[0]
json.dump({
  "image": "debian12-base", "version": "bench", "arch": "amd64", "description": "bench",
  "backend": "qemu", "accel": "tcg",
  "base": {"kind": "bootstrap", "source": "bench", "sha256": "0" * 64},
  "definition_sha256": "0" * 64, "rendered_sha256": "0" * 64,
  "artifact": {"file": os.path.basename(sys.argv[3]), "format": "qcow2", "compression": "none",
               "size": d["size"], "virtual_size": d["size"]},
  "digests": {k: d[k] for k in ("sha256", "sha512", "md5", "size")},
  "smoke": None,
  "build": {"started": "2026-01-01T00:00:00Z", "duration_seconds": 0, "tool": "imgbuild",
            "tool_version": "bench", "git_commit": None, "git_dirty": False, "host": "bench"},
}, open(sys.argv[2], "w"))
PY
cat >"$work/clouds.yaml" <<EOF
clouds:
  bench:
    auth:
      auth_url: http://127.0.0.1:$kport/v3
      username: admin
      password: "$pw"
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
EOF
export OS_CLIENT_CONFIG_FILE="$work/clouds.yaml" OS_CLOUD=bench
osc="$venv/bin/openstack"

measure() { # label command...
  local tf="$work/time.txt"
  /usr/bin/time -f '%e %M' -o "$tf" "${@:2}" >/dev/null 2>"$work/err.txt" || { cat "$work/err.txt"; exit 1; }
  read -r secs kib <"$tf"
  printf '%s\t%s\t%s\n' "$1" "$secs" "$kib" | tee -a "$out"
}
delete_all() {
  for id in $("$osc" image list -f value -c ID); do "$osc" image delete "$id"; done
}

printf 'tool\tseconds\tmax_rss_kib\n' >"$out"
for i in $(seq 1 "$runs"); do
  delete_all
  measure imgbuild "$imgbuild" -q publish debian12-base --dist "$dist" --method upload --disk-format qcow2
  delete_all
  measure openstack "$osc" image create --file "$artifact" --disk-format qcow2 --container-format bare "bench-$i"
done
delete_all

python3 - "$out" "$size_mib" <<'PY'
import csv, statistics, sys, subprocess
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def col(tool, k): return [float(r[k]) for r in rows if r["tool"] == tool]
print(f"| {sys.argv[2]} MiB qcow2 to Glance | median wall s | min–max s | median peak RSS MiB |")
print("|---|---|---|---|")
for tool, label in (("imgbuild", "imgbuild publish (verify + upload + hash check)"),
                    ("openstack", "openstack image create --file")):
    s, m = col(tool, "seconds"), col(tool, "max_rss_kib")
    print(f"| {label} | {statistics.median(s):.1f} | {min(s):.1f}–{max(s):.1f} | {statistics.median(m)/1024:.0f} |")
PY
