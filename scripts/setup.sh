#!/usr/bin/env bash
# Installs what qmptap's tests use: Debian's QEMU 7.2 (qemu-system-x86, qemu-utils with
# qemu-storage-daemon and qemu-img), libvirt 9.0 (libvirtd, virtlogd, virsh; started by the
# tests through scripts/libvirt/daemons.sh, under tini), socat and jq (benchmark baselines),
# tmux, and QEMU's own Python client qemu.qmp from PyPI. Idempotent; needs root for apt-get.
set -euo pipefail

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v socat >/dev/null || missing+=(socat)
command -v jq >/dev/null || missing+=(jq)
command -v tmux >/dev/null || missing+=(tmux)
command -v tini >/dev/null || missing+=(tini)
command -v libvirtd >/dev/null || missing+=(libvirt-daemon libvirt-daemon-driver-qemu)
command -v virsh >/dev/null || missing+=(libvirt-clients)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  # qemu-system-x86 7.2 conflicts with a newer qemu-utils from backports if one is installed;
  # apt replaces it, and qemu-utils 7.2 comes back below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v qemu-img >/dev/null || ! command -v qemu-storage-daemon >/dev/null; then
  echo "setup: installing qemu-utils" >&2
  [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null) ]] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi
if ! python3 -c 'import qemu.qmp' 2>/dev/null; then
  echo "setup: installing qemu.qmp" >&2
  python3 -m pip install -q --root-user-action=ignore qemu.qmp
fi
# libvirt's QEMU driver looks its default user up before reading qemu.conf (the tests run QEMU
# as root), and virtlogd needs its log directory; libvirt-daemon-system would bring both, with
# systemd units and networks the tests do not want.
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt/qemu
for tool in qemu-system-x86_64 qemu-storage-daemon qemu-img socat jq tmux tini libvirtd virtlogd virsh; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is still missing" >&2; exit 1; }
done
python3 -c 'import qemu.qmp' || { echo "setup: the qemu.qmp Python package is still missing" >&2; exit 1; }
