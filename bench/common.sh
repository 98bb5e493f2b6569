# Sourced by the build benchmarks (bench/build.sh, bench/layers.sh): the release binary, a
# work folder, the fixtures copied with 2-vCPU build VMs, the shared bases, and the timing
# helpers. Sets imgbuild, work, out (bench/results/$1.tsv), shared, images.
#   source bench/common.sh NAME
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -q
imgbuild="$PWD/target/release/imgbuild"
work="$(mktemp -d "$PWD/target/bench-$1-XXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results
out="bench/results/$1.tsv"
shared="$PWD/target/bench-cache"      # bases only (bootstrap/), kept between runs
mkdir -p "$shared/bootstrap"
cp -a tests/fixtures "$work/fx"
# The build VM gets the definition's default of 2 vCPUs, for every tool alike: the tests' fixture
# pins 1 because a loaded CI host can starve a second vCPU under TCG; this machine is quiet
# while the benchmark runs. (A/B of 2026-11-24, same machine and cache: the stack rebuild took
# 69/68/73 s with 1 vCPU and 53/52/58 s with 2.)
sed -i 's/^  cpus: 1$/  cpus: 2/' "$work/fx/images/e2e-common.yaml"
grep -q '^  cpus: 2$' "$work/fx/images/e2e-common.yaml"
images="$work/fx/images"
export IMGBUILD_VENV="$PWD/.venv"

fresh_cache() { # a cache root with the shared bases and nothing else
  local c="$work/cache-$1"
  rm -rf "$c"; mkdir -p "$c"; ln -s "$shared/bootstrap" "$c/bootstrap"
  echo "$c"
}

measure() { # label cache command...
  local tf="$work/time.txt" label=$1 cache=$2; shift 2
  IMGBUILD_CACHE_DIR="$cache" /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$work/out.json" 2>"$work/err.txt" \
    || { tail -30 "$work/err.txt"; exit 1; }
  read -r secs kib <"$tf"
  printf '%s\t%s\t%s\n' "$label" "$secs" "$kib" | tee -a "$out"
}

# warm_base IMAGE: the shared bootstrap base, from the tests' cache (same bootstrap inputs,
# content-addressed) or built once with IMAGE (not timed).
warm_base() {
  if ! compgen -G "$shared/bootstrap/*.qcow2" >/dev/null && compgen -G "target/e2e-cache/bootstrap/*.qcow2" >/dev/null; then
    cp -al target/e2e-cache/bootstrap/. "$shared/bootstrap/" 2>/dev/null || cp -a target/e2e-cache/bootstrap/. "$shared/bootstrap/"
  fi
  if ! compgen -G "$shared/bootstrap/*.qcow2" >/dev/null; then
    echo "== warm-up: the shared bootstrap base (not timed)"
    IMGBUILD_CACHE_DIR="$(fresh_cache warm)" "$imgbuild" --images-dir "$images" -q build "$1" \
      --version warm --out "$work/dist" --no-smoke >/dev/null
  fi
}

# s3_store BUCKET: Swift with its S3 API on 127.0.0.1:18089 for the rest of the run (stopped at
# exit), BUCKET made, and imgbuild's AWS_* environment set for it (scripts/s3-test-stack.sh).
s3_store() {
  local venv="$PWD/target/s3-venv" port=18089 state="$work/s3" secret auth token storage
  bash scripts/s3-test-stack.sh install "$venv"
  secret=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  mkdir -p "$state"
  S3_PORT=$port S3_TEST_SECRET=$secret bash scripts/s3-test-stack.sh start "$venv" "$state" >"$work/s3.out" 2>&1 &
  s3_pid=$!
  # The run's own status, not the stopped store's: under `set -e` a `wait` for the store that
  # returns 143 (it was stopped) ends the trap there with that status, so both are `|| true`.
  trap 'rc=$?; kill $s3_pid 2>/dev/null || true; wait $s3_pid 2>/dev/null || true; rm -rf "$work"; exit $rc' EXIT
  for _ in $(seq 120); do grep -q READY "$work/s3.out" 2>/dev/null && break; sleep 1; done
  grep -q READY "$work/s3.out" || { cat "$work/s3.out"; exit 1; }
  auth=$(curl -sfi -H "X-Auth-User: test:tester" -H "X-Auth-Key: $secret" "http://127.0.0.1:$port/auth/v1.0")
  token=$(awk -F': ' 'tolower($1)=="x-auth-token"{print $2}' <<<"$auth" | tr -d '\r')
  storage=$(awk -F': ' 'tolower($1)=="x-storage-url"{print $2}' <<<"$auth" | tr -d '\r')
  curl -sf -X PUT -H "X-Auth-Token: $token" "$storage/$1" >/dev/null
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID="test:tester" AWS_SECRET_ACCESS_KEY="$secret"
  unset AWS_CA_BUNDLE
}
