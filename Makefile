# imgbuild — see README.md. Every target is idempotent.
SHELL := /bin/bash
CARGO ?= cargo
VENV  ?= .venv
export IMGBUILD_VENV := $(abspath $(VENV))

.PHONY: all host-tools venv openstack-venv s3-venv gitlab-ci-local kolla-venv build test test-tool-free test-e2e test-openstack lint demo clean

all: build

## Host tools: qemu-system (bookworm-backports), packer, mmdebstrap, cloud-init, xorriso, ovmf, ...
host-tools: venv openstack-venv kolla-venv s3-venv
	bash scripts/install-host-tools.sh
	$(MAKE) gitlab-ci-local

## Keystone + Glance + python-openstackclient (pinned, scripts/openstack-constraints.txt) for
## the tests that run a real OpenStack on 127.0.0.1.
openstack-venv:
	bash scripts/openstack-test-stack.sh install target/openstack-venv

## OpenStack Swift 2.38.3 with its S3 API (s3api, tempauth) for the remote-cache test against
## a real object store on 127.0.0.1 (scripts/s3-test-stack.sh; memcached from apt).
s3-venv:
	bash scripts/s3-test-stack.sh install target/s3-venv

## gitlab-ci-local from npm (4.70.1: later releases need Node 22's Set methods; this host has
## Node 20) for the end-to-end test that runs `imgbuild ci gitlab`'s jobs with its shell executor.
gitlab-ci-local: target/gitlab-ci-local/node_modules/.bin/gitlab-ci-local
target/gitlab-ci-local/node_modules/.bin/gitlab-ci-local:
	mkdir -p target/gitlab-ci-local
	npm install --prefix target/gitlab-ci-local --no-audit --no-fund --loglevel=error gitlab-ci-local@4.70.1

## Kolla-Ansible 2025.2 (kolla-ansible 21.3.0, Ansible 11 with the collections it needs) for
## the end-to-end test that runs its prechecks against the Debian kolla-node twin.
kolla-venv: target/kolla-venv/.installed
target/kolla-venv/.installed: requirements-kolla.txt
	python3 -m venv target/kolla-venv
	target/kolla-venv/bin/pip install --quiet --disable-pip-version-check -r requirements-kolla.txt
	touch $@

## Python validators (check-jsonschema, PyYAML) in a local venv.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

## The test suite: unit tests and end-to-end tests against the real tools (the desktop twin's
## end-to-end test runs beside the rest; see scripts/test.sh, which installs the venvs and
## gitlab-ci-local while the tests compile).
test:
	bash scripts/install-host-tools.sh
	CARGO=$(CARGO) MAKE="$(MAKE)" bash scripts/test.sh

## One tier at a time (README, "Tests"): the binary with the validators, no VM (plus the unit
## tests); real builds and boots; a real Keystone + Glance.
test-tool-free: venv
	$(CARGO) test --locked --lib --bins --test tool_free
test-e2e: host-tools
	$(CARGO) test --locked --test e2e -- --test-threads=2
test-openstack: openstack-venv
	$(CARGO) test --locked --test openstack -- --test-threads=1

## The main job on this machine: validate the whole catalog with every real validator, render
## the flagship image, and build the Debian 12 base image end to end (smoke-booted, checksummed).
demo: host-tools build
	./target/release/imgbuild validate --all --strict
	./target/release/imgbuild render desktop-ai -o rendered/desktop-ai
	./target/release/imgbuild build debian12-base --force --version demo
	cd dist/debian12-base/demo && sha256sum -c SHA256SUMS

clean:
	rm -rf target rendered dist
