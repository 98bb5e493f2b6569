#!/usr/bin/env bash
# A real object store with an S3 API on 127.0.0.1 for imgbuild's remote-cache tests (and by
# hand): OpenStack Swift from PyPI, one node, one replica, with its s3api middleware and
# tempauth (user test:tester), and memcached (tempauth keeps its tokens there).
#
#   scripts/s3-test-stack.sh install VENV        pip install swift into VENV
#   scripts/s3-test-stack.sh start VENV STATE    configure and start; prints READY when it answers
#
# `start` runs in the foreground until killed (the test fixture owns it); every server it
# starts dies with it. State (rings, object files, logs) is in STATE. Port: S3_PORT (default
# 8089). S3 clients use endpoint http://127.0.0.1:S3_PORT, path-style, access key
# `test:tester` and the secret from S3_TEST_SECRET (the fixture makes a random one per run).
# With S3_TLS_PORT, S3_TLS_CERT and S3_TLS_KEY a second proxy serves the same store over
# HTTPS on that port with that certificate (Swift's proxy `cert_file`/`key_file`; S3_TLS_CA,
# the CA that signed it, for the readiness check).
# Swift reads /etc/swift/swift.conf whatever its other configuration says (the path is a
# constant in swift.common.utils), so `start` writes that file if it is missing.
set -euo pipefail

cmd="${1:?install|start}"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
venv="$(abspath "${2:?VENV}")"

if [[ "$cmd" == install ]]; then
  if [[ -x "$venv/bin/swift-proxy-server" ]]; then exit 0; fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "swift==2.38.3"
  exit 0
fi

state="$(abspath "${3:?STATE}")"
port="${S3_PORT:-8089}"
secret="${S3_TEST_SECRET:?S3_TEST_SECRET: the secret of test:tester}"
command -v memcached >/dev/null || { echo "memcached is not installed (apt-get install memcached)" >&2; exit 1; }
mkdir -p "$state/etc" "$state/srv/1" "$state/log"
etc="$state/etc"
if [[ ! -f /etc/swift/swift.conf ]]; then
  mkdir -p /etc/swift
  printf '[swift-hash]\nswift_hash_path_suffix = imgbuild-test\nswift_hash_path_prefix = imgbuild-test\n[storage-policy:0]\nname = gold\ndefault = yes\n' >/etc/swift/swift.conf
fi
cp /etc/swift/swift.conf "$etc/swift.conf"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

base=$((port + 100))
mport=$((port + 200))
"$(command -v memcached)" -u root -l 127.0.0.1 -p "$mport" >"$state/log/memcached.log" 2>&1 &
pids+=($!)
i=0
for kind in account container object; do
  p=$((base + i)); i=$((i + 1))
  cat >"$etc/$kind-server.conf" <<EOF
[DEFAULT]
devices = $state/srv
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = $p
workers = 0
swift_dir = $etc
[pipeline:main]
pipeline = $kind-server
[app:$kind-server]
use = egg:swift#$kind
EOF
  if [[ ! -f "$etc/$kind.ring.gz" ]]; then
    (cd "$etc" && "$venv/bin/swift-ring-builder" "$kind.builder" create 8 1 1 >/dev/null &&
      "$venv/bin/swift-ring-builder" "$kind.builder" add "r1z1-127.0.0.1:$p/1" 100 >/dev/null &&
      "$venv/bin/swift-ring-builder" "$kind.builder" rebalance >/dev/null)
  fi
  "$venv/bin/swift-$kind-server" "$etc/$kind-server.conf" -v >"$state/log/$kind.log" 2>&1 &
  pids+=($!)
done
proxy_conf() {
  # $1: port, then extra [DEFAULT] lines
  local p="$1"; shift
  cat <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $p
workers = 0
swift_dir = $etc
$(printf '%s\n' "$@")
[pipeline:main]
pipeline = catch_errors gatekeeper proxy-logging cache s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$mport
[filter:s3api]
use = egg:swift#s3api
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = $secret .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
}
proxy_conf "$port" >"$etc/proxy-server.conf"
"$venv/bin/swift-proxy-server" "$etc/proxy-server.conf" -v >"$state/log/proxy.log" 2>&1 &
pids+=($!)
tls_port="${S3_TLS_PORT:-}"
if [[ -n "$tls_port" ]]; then
  proxy_conf "$tls_port" "cert_file = ${S3_TLS_CERT:?S3_TLS_CERT}" "key_file = ${S3_TLS_KEY:?S3_TLS_KEY}" \
    >"$etc/proxy-server-tls.conf"
  "$venv/bin/swift-proxy-server" "$etc/proxy-server-tls.conf" -v >"$state/log/proxy-tls.log" 2>&1 &
  pids+=($!)
fi
for _ in $(seq 1 120); do
  if curl -sf -o /dev/null -H "X-Auth-User: test:tester" -H "X-Auth-Key: $secret" "http://127.0.0.1:$port/auth/v1.0" &&
    { [[ -z "$tls_port" ]] || curl -sf -o /dev/null --cacert "${S3_TLS_CA:-$S3_TLS_CERT}" -H "X-Auth-User: test:tester" -H "X-Auth-Key: $secret" "https://127.0.0.1:$tls_port/auth/v1.0"; }; then
    echo "READY http://127.0.0.1:$port"
    wait
    exit 0
  fi
  sleep 0.5
done
echo "swift did not answer on 127.0.0.1:$port; logs in $state/log" >&2
exit 1
