#!/usr/bin/env bash
# A real Keystone v3 + Glance v2 on 127.0.0.1 for imgbuild's publish tests (and by hand).
#
#   scripts/openstack-test-stack.sh install VENV          pip install the pinned set into VENV
#   scripts/openstack-test-stack.sh start VENV STATE      configure and start both; prints when ready
#   scripts/openstack-test-stack.sh glance VENV STATE     one more Glance for a running Keystone
#
# `start` and `glance` run in the foreground until killed (the test fixture owns them); every
# server they start dies with them. State (sqlite, fernet keys, image store, logs) is in STATE.
# Ports: KEYSTONE_PORT (default 5000) and GLANCE_PORT (default 9292). With TLS_CERT, TLS_KEY
# and TLS_CA set, the servers speak HTTPS with that certificate (and trust TLS_CA between
# them); with TLS_CLIENT_CA too, Glance also requires a client certificate signed by it.
# The admin password is read from the environment (OS_TEST_ADMIN_PASSWORD), never written to
# the repo; the test fixture makes a random one per run.
#
# `glance` needs KEYSTONE_URL (…/v3) and takes GLANCE_DEFAULTS, lines added to the [DEFAULT]
# section of its glance-api.conf (e.g. `image_size_cap = 1048576`). It registers no endpoint:
#   openstack endpoint create --region R image public http://127.0.0.1:PORT
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:?install|start|glance}"
# Paths given relative to where the script is started: absolute from here on (the servers run
# in STATE/NAME-run, where a relative VENV, STATE or certificate would point elsewhere).
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
venv="$(abspath "${2:?VENV}")"
for v in TLS_CERT TLS_KEY TLS_CA TLS_CLIENT_CA TLS_PROBE_CERT TLS_PROBE_KEY; do
  if [[ -n "${!v:-}" ]]; then export "$v=$(abspath "${!v}")"; fi
done

if [[ "$cmd" == install ]]; then
  if [[ -x "$venv/bin/gunicorn" && -x "$venv/bin/openstack" && -f "$venv/.installed" ]] &&
     cmp -s "$here/openstack-constraints.txt" "$venv/.installed"; then
    exit 0
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$here/openstack-constraints.txt" keystone glance gunicorn python-openstackclient
  cp "$here/openstack-constraints.txt" "$venv/.installed"
  exit 0
fi

[[ "$cmd" == start || "$cmd" == glance ]] || { echo "usage: $0 install|start|glance VENV [STATE]" >&2; exit 2; }
state="$(abspath "${3:?STATE}")"
kport="${KEYSTONE_PORT:-5000}"
gport="${GLANCE_PORT:-9292}"
pw="${OS_TEST_ADMIN_PASSWORD:?set OS_TEST_ADMIN_PASSWORD}"
scheme=http
curl_tls=()
if [[ -n "${TLS_CERT:-}" ]]; then
  scheme=https
  curl_tls=(--cacert "$TLS_CA")
  export OS_CACERT="$TLS_CA"
  if [[ -n "${TLS_CLIENT_CA:-}" ]]; then
    # The readiness probe needs a client certificate too: any one TLS_CLIENT_CA signed.
    curl_tls+=(--cert "${TLS_PROBE_CERT:?TLS_PROBE_CERT with TLS_CLIENT_CA}" --key "${TLS_PROBE_KEY:?}")
  fi
fi
keystone_url="${KEYSTONE_URL:-$scheme://127.0.0.1:$kport/v3}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
py="$venv/bin"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_http() { # url what
  for _ in $(seq 1 240); do
    if curl -s "${curl_tls[@]}" --max-time 2 -o /dev/null "$1"; then return 0; fi
    sleep 0.5
  done
  echo "$2 did not answer at $1; log:" >&2
  tail -n 40 "$state/$2.log" >&2 || true
  exit 1
}

# serve NAME PORT WSGI_APP [GUNICORN_SETTING...]: gunicorn in the background, logs in
# STATE/NAME.log. Keystone's and Glance's oslo.config read sys.argv, so gunicorn gets every
# setting from the gunicorn.conf.py in its working directory and no flags.
serve() {
  local name="$1" port="$2" app="$3"
  shift 3
  mkdir -p "$state/$name-run"
  {
    echo "wsgi_app = \"$app\""
    echo "bind = \"127.0.0.1:$port\""
    echo "workers = 1"
    printf '%s\n' "$@"
    if [[ -n "${TLS_CERT:-}" ]]; then
      echo "certfile = \"$TLS_CERT\""
      echo "keyfile = \"$TLS_KEY\""
    fi
  } >"$state/$name-run/gunicorn.conf.py"
  (cd "$state/$name-run" && exec "$py/gunicorn") >"$state/$name.log" 2>&1 &
  pids+=($!)
}

# --- Keystone ------------------------------------------------------------------------------
start_keystone() {
  mkdir -p "$state"/{keystone,fernet,receipts,credential}
  cat >"$state/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $state/keystone-app.log
[database]
connection = sqlite:///$state/keystone.sqlite
[token]
provider = fernet
[fernet_tokens]
key_repository = $state/fernet
[fernet_receipts]
key_repository = $state/receipts
[credential]
key_repository = $state/credential
EOF
  export OS_KEYSTONE_CONFIG_DIR="$state/keystone"
  local manage=("$py/keystone-manage" --config-file "$state/keystone/keystone.conf")
  "${manage[@]}" db_sync >>"$state/setup.log" 2>&1
  for what in fernet_setup credential_setup; do
    "${manage[@]}" "$what" --keystone-user root --keystone-group root >>"$state/setup.log" 2>&1
  done
  "${manage[@]}" bootstrap \
    --bootstrap-password "$pw" \
    --bootstrap-admin-url "$keystone_url" \
    --bootstrap-public-url "$keystone_url" \
    --bootstrap-internal-url "$keystone_url" \
    --bootstrap-region-id RegionOne >>"$state/setup.log" 2>&1
  # With sqlite: one process, one thread, or "database is locked".
  serve keystone "$kport" keystone.wsgi.api:application "threads = 1"
  wait_http "$keystone_url" keystone
}

# --- Glance --------------------------------------------------------------------------------
start_glance() {
  mkdir -p "$state"/{glance,images,staging,tasks,locks}
  local authtoken_tls=""
  [[ -n "${TLS_CA:-}" ]] && authtoken_tls="cafile = $TLS_CA"
  # sqlite: "database is locked" comes at once, not after a wait, when two threads' transactions
  # both read and then write; Glance turns it into a 500 (CI met it on DELETE, parallel tests
  # on PUT). So Glance serves one request at a time (below), the file is in WAL mode (set
  # after db_sync; it stays with the file) so its import tasks' reads do not block, and a
  # writer waits up to 60 s for the lock.
  cat >"$state/glance/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = fs:file
enabled_import_methods = [glance-direct,web-download,copy-image]
log_file = $state/glance-app.log
${GLANCE_DEFAULTS:-}
[database]
connection = sqlite:///$state/glance.sqlite?timeout=60
[paste_deploy]
flavor = keystone
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $state/images
[os_glance_staging_store]
filesystem_store_datadir = $state/staging
[os_glance_tasks_store]
filesystem_store_datadir = $state/tasks
[oslo_concurrency]
lock_path = $state/locks
[keystone_authtoken]
www_authenticate_uri = $keystone_url
auth_url = $keystone_url
auth_type = password
username = admin
password = $pw
project_name = admin
user_domain_name = Default
project_domain_name = Default
$authtoken_tls
EOF
  chmod 600 "$state/glance/glance-api.conf"
  cp "$venv/etc/glance/glance-api-paste.ini" "$state/glance/"
  export OS_GLANCE_CONFIG_DIR="$state/glance"
  "$py/glance-manage" --config-file "$state/glance/glance-api.conf" db_sync >>"$state/setup.log" 2>&1
  "$py/python" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL").fetchone()[0])' \
    "$state/glance.sqlite" | grep -qx wal
  # gthread and no worker timeout: the default sync worker kills uploads after 30 s.
  local settings=('worker_class = "gthread"' "threads = 1" "timeout = 0")
  if [[ -n "${TLS_CLIENT_CA:-}" ]]; then
    settings+=("cert_reqs = 2" "ca_certs = \"$TLS_CLIENT_CA\"")
  fi
  serve glance "$gport" glance.wsgi.api:application "${settings[@]}"
  wait_http "$scheme://127.0.0.1:$gport/versions" glance
}

if [[ "$cmd" == start ]]; then
  start_keystone
  # The image service and its endpoints (bootstrap makes only identity's).
  export OS_AUTH_URL="$keystone_url" OS_USERNAME=admin OS_PASSWORD="$pw" \
    OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default \
    OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne
  "$py/openstack" service create --name glance image >>"$state/setup.log" 2>&1
  for iface in public internal admin; do
    "$py/openstack" endpoint create --region RegionOne image "$iface" "$scheme://127.0.0.1:$gport" >>"$state/setup.log" 2>&1
  done
  start_glance
  echo "READY keystone=$keystone_url glance=$scheme://127.0.0.1:$gport"
else
  start_glance
  echo "READY glance=$scheme://127.0.0.1:$gport"
fi
wait
