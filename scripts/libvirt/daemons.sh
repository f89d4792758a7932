#!/usr/bin/env bash
# Starts or stops a real libvirt (Debian's libvirtd 9.0 and virtlogd) for the tests, as root,
# without touching the system's /etc/libvirt:
#
#   scripts/libvirt/daemons.sh start STATE   # config and logs in STATE; waits until virsh answers
#   scripts/libvirt/daemons.sh stop          # destroys and undefines every domain, stops both
#
# libvirtd 9.0 always reads SYSCONFDIR/libvirt/qemu.conf when privileged, so it runs in its own
# mount namespace with STATE/etc over /etc/libvirt. QEMU runs as root (its wrapper writes
# captures where the test says), without cgroups, namespaces or a security driver: none is
# needed for TCG test domains and each breaks in some sandbox. libvirtd runs under `tini -s` so
# that exited QEMUs are reaped at once (libvirt waits for that after save and destroy; a slow
# pid 1 made each take 1-2 s more). Packages, the libvirt-qemu user and /var/log/libvirt come
# from scripts/setup.sh.
set -euo pipefail
URI=qemu:///system
say() { printf 'libvirt: %s\n' "$*" >&2; }
alive() { # PIDFILE NAME: the pid in it runs (not a zombie) and is that program
  local pid
  pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] || return 1  # the daemon removes it as it exits
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) =~ ^[^Z]$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}
stop_daemon() { # PIDFILE NAME
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  local pid; pid=$(cat "$1" 2>/dev/null) || return 0
  kill -TERM "$pid"
  for _ in $(seq 100); do alive "$1" "$2" || break; sleep 0.1; done
  alive "$1" "$2" && kill -KILL "$pid"
  rm -f "$1"
}

case ${1:-} in
start)
  state=${2:?usage: daemons.sh start STATE}
  [[ $(id -u) == 0 ]] || { say "must run as root"; exit 1; }
  for tool in libvirtd virtlogd virsh tini unshare; do
    command -v "$tool" >/dev/null || { say "$tool is missing: run scripts/setup.sh"; exit 1; }
  done
  if alive /run/libvirtd.pid libvirtd; then
    say "another libvirtd is running (pid $(cat /run/libvirtd.pid)); stop it first"; exit 1
  fi
  mkdir -p "$state/etc" "$state/log"
  state=$(cd "$state" && pwd)
  cat >"$state/etc/qemu.conf" <<'CONF'
user = "root"
group = "root"
security_driver = "none"
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
CONF
  cat >"$state/etc/libvirtd.conf" <<CONF
log_filters="1:qemu.qemu_monitor 1:qemu.qemu_process"
log_outputs="1:file:$state/log/libvirtd.log"
CONF
  echo "log_outputs=\"3:file:$state/log/virtlogd.log\"" >"$state/etc/virtlogd.conf"
  alive /run/virtlogd.pid virtlogd || virtlogd -d -f "$state/etc/virtlogd.conf"
  rm -f /run/libvirtd.pid
  (cd / && exec setsid -f unshare --mount --propagation slave -- /bin/sh -c \
    'd=$1; shift; mount --bind "$d" /etc/libvirt && exec "$@"' sh "$state/etc" \
    tini -s -- libvirtd -f "$state/etc/libvirtd.conf" </dev/null >>"$state/log/libvirtd.stdout" 2>&1)
  deadline=$((SECONDS + 90))
  until virsh -c "$URI" version >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      say "libvirtd did not answer within 90 s:"; tail -20 "$state/log/libvirtd.stdout" "$state/log/libvirtd.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  ;;
stop)
  if alive /run/libvirtd.pid libvirtd; then
    for d in $(virsh -c "$URI" list --all --name 2>/dev/null); do
      virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
      virsh -c "$URI" undefine "$d" --managed-save >/dev/null 2>&1 || true
    done
  fi
  stop_daemon /run/libvirtd.pid libvirtd
  stop_daemon /run/virtlogd.pid virtlogd
  ;;
*)
  say "usage: daemons.sh start STATE | stop"; exit 2
  ;;
esac
