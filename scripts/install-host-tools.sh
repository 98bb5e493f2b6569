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
      tigervnc-tools openssl gnupg xvfb xauth freerdp2-x11)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ! dpkg -s qemu-system-x86 >/dev/null 2>&1; then
  $SUDO apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
fi
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# cloud-init's package enables its services; on a build host they must never run.
$SUDO systemctl disable cloud-init cloud-init-local cloud-config cloud-final >/dev/null 2>&1 || true
