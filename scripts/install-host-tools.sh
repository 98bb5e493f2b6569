#!/usr/bin/env bash
# Installs the host tools imgbuild drives, idempotently. Needs root (apt-get).
# qemu-system-x86 comes from bookworm-backports to match the preinstalled qemu-utils.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
bp=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$bp" ] && grep -qs bookworm /etc/os-release; then
  $SUDO tee "$bp" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
# Some preinstalled third-party sources are unreachable here; apt still refreshes Debian's.
$SUDO apt-get update -o Acquire::Retries=3 || true
pkgs=(packer mmdebstrap xorriso cloud-init ovmf gdisk mtools dosfstools e2fsprogs
      grub-pc-bin grub-efi-amd64-bin grub2-common fdisk cpio zstd
      qemu-efi-aarch64 arch-test binfmt-support openssh-client
      tigervnc-tools openssl gnupg xvfb xauth freerdp2-x11 memcached rsync)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# arm64 on this x86 host: qemu-system-arm boots it (TCG), qemu-user-static runs the arm64
# tree's programs while mmdebstrap bootstraps it (through binfmt_misc, below).
qemu=()
for p in qemu-system-x86 qemu-system-arm qemu-user-static; do
  dpkg -s "$p" >/dev/null 2>&1 || qemu+=("$p")
done
if [ ${#qemu[@]} -gt 0 ]; then
  $SUDO apt-get install -y --no-install-recommends -t bookworm-backports "${qemu[@]}" qemu-utils
fi
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# npm for gitlab-ci-local (the Makefile's gitlab-ci-local target); Debian's nodejs if there is none.
if ! command -v npm >/dev/null; then
  $SUDO apt-get install -y --no-install-recommends nodejs npm
fi
# cloud-init's package enables its services; on a build host they must never run.
$SUDO systemctl disable cloud-init cloud-init-local cloud-config cloud-final >/dev/null 2>&1 || true
# binfmt_misc: mounted (a container may not have it) and the aarch64 entry registered with the
# F flag (the interpreter opened now, so it works inside a chroot). systemd-binfmt does this at
# boot on a full system; a CI container has no such boot.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
if [ -e /proc/sys/fs/binfmt_misc/register ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf | $SUDO tee /proc/sys/fs/binfmt_misc/register >/dev/null || true
fi
