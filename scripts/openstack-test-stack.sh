#!/usr/bin/env bash
# A real Keystone v3 + Glance v2 on 127.0.0.1 for imgbuild's publish tests (and by hand).
#
#   scripts/openstack-test-stack.sh install VENV          pip install the pinned set into VENV
#   scripts/openstack-test-stack.sh start VENV STATE      configure and start both; prints when ready
#
# `start` runs in the foreground until killed (the test fixture owns it); every server it
# starts dies with it. State (sqlite, fernet keys, image store, logs, clouds.yaml) is in STATE.
# Ports: KEYSTONE_PORT (default 5000) and GLANCE_PORT (default 9292). With TLS_CERT, TLS_KEY
# and TLS_CA set, both serve HTTPS with that certificate (and trust TLS_CA between them).
# The admin password is read from the environment (OS_TEST_ADMIN_PASSWORD), never written to
# the repo; the test fixture makes a random one per run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:?install|start}"
venv="${2:?VENV}"

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

[[ "$cmd" == start ]] || { echo "usage: $0 install|start VENV [STATE]" >&2; exit 2; }
state="${3:?STATE}"
kport="${KEYSTONE_PORT:-5000}"
gport="${GLANCE_PORT:-9292}"
pw="${OS_TEST_ADMIN_PASSWORD:?set OS_TEST_ADMIN_PASSWORD}"
scheme=http
curl_tls=()
gunicorn_tls=""
authtoken_tls=""
if [[ -n "${TLS_CERT:-}" ]]; then
  scheme=https
  curl_tls=(--cacert "$TLS_CA")
  gunicorn_tls=$'certfile = "'"$TLS_CERT"$'"\nkeyfile = "'"$TLS_KEY"$'"'
  authtoken_tls="cafile = $TLS_CA"
  export OS_CACERT="$TLS_CA"
fi
mkdir -p "$state"/{keystone,glance,images,staging,tasks,locks,fernet,receipts,credential}
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

# --- Keystone ------------------------------------------------------------------------------
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
"$py/keystone-manage" --config-file "$state/keystone/keystone.conf" db_sync >>"$state/setup.log" 2>&1
for what in fernet_setup credential_setup; do
  "$py/keystone-manage" --config-file "$state/keystone/keystone.conf" "$what" \
    --keystone-user root --keystone-group root >>"$state/setup.log" 2>&1
done
"$py/keystone-manage" --config-file "$state/keystone/keystone.conf" bootstrap \
  --bootstrap-password "$pw" \
  --bootstrap-admin-url "$scheme://127.0.0.1:$kport/v3" \
  --bootstrap-public-url "$scheme://127.0.0.1:$kport/v3" \
  --bootstrap-internal-url "$scheme://127.0.0.1:$kport/v3" \
  --bootstrap-region-id RegionOne >>"$state/setup.log" 2>&1
# oslo.config reads sys.argv: gunicorn gets every setting from its config file, no flags.
mkdir -p "$state/keystone-run"
cat >"$state/keystone-run/gunicorn.conf.py" <<EOF
wsgi_app = "keystone.wsgi.api:application"
bind = "127.0.0.1:$kport"
workers = 1
threads = 1
$gunicorn_tls
EOF
(cd "$state/keystone-run" && exec "$py/gunicorn") >"$state/keystone.log" 2>&1 &
pids+=($!)
wait_http "$scheme://127.0.0.1:$kport/v3" keystone

# The image service and its endpoints (bootstrap makes only identity's).
export OS_AUTH_URL="$scheme://127.0.0.1:$kport/v3" OS_USERNAME=admin OS_PASSWORD="$pw" \
  OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default \
  OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne
"$py/openstack" service create --name glance image >>"$state/setup.log" 2>&1
for iface in public internal admin; do
  "$py/openstack" endpoint create --region RegionOne image "$iface" "$scheme://127.0.0.1:$gport" >>"$state/setup.log" 2>&1
done

# --- Glance --------------------------------------------------------------------------------
cat >"$state/glance/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = fs:file
enabled_import_methods = [glance-direct,web-download,copy-image]
log_file = $state/glance-app.log
[database]
connection = sqlite:///$state/glance.sqlite
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
www_authenticate_uri = $scheme://127.0.0.1:$kport/v3
auth_url = $scheme://127.0.0.1:$kport/v3
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
mkdir -p "$state/glance-run"
cat >"$state/glance-run/gunicorn.conf.py" <<EOF
wsgi_app = "glance.wsgi.api:application"
bind = "127.0.0.1:$gport"
workers = 1
worker_class = "gthread"
threads = 8
timeout = 0
$gunicorn_tls
EOF
(cd "$state/glance-run" && exec "$py/gunicorn") >"$state/glance.log" 2>&1 &
pids+=($!)
wait_http "$scheme://127.0.0.1:$gport/versions" glance
echo "READY keystone=$scheme://127.0.0.1:$kport/v3 glance=$scheme://127.0.0.1:$gport"
wait
