#!/usr/bin/env bash
# What recording costs libvirt: `virsh start` (libvirt's ~420 QMP commands at every start, then
# `cont`) and `virsh destroy` of the same tiny TCG domain, with QEMU started by a plain
# wrapper script (the baseline) and by `qmptap wrap`, interleaved ROUNDS times (default 10).
# Needs root and scripts/setup.sh; starts and stops its own libvirtd.
#   scripts/bench/libvirt-start.sh QMPTAP_BINARY [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
qmptap=$(realpath "${1:?usage: libvirt-start.sh QMPTAP_BINARY [ROUNDS]}")
rounds=${2:-10}
dir=$(mktemp -d /tmp/qmptap-bench-libvirt.XXXXXX)
trap '"$root/scripts/libvirt/daemons.sh" stop; rm -rf "$dir"' EXIT
"$root/scripts/libvirt/daemons.sh" start "$dir/state"
mkdir "$dir/captures"
printf '#!/bin/sh\nexec /usr/bin/qemu-system-x86_64 "$@"\n' >"$dir/plain"
printf '#!/bin/sh\nexec %s wrap --capture-dir %s -- /usr/bin/qemu-system-x86_64 "$@"\n' \
  "$qmptap" "$dir/captures" >"$dir/wrap"
chmod 0755 "$dir/plain" "$dir/wrap"
v=(virsh -q -c qemu:///system)
for kind in plain wrap; do
  cat >"$dir/$kind.xml" <<XML
<domain type='qemu'><name>bench-$kind</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>$dir/$kind</emulator>
<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>
XML
  "${v[@]}" define "$dir/$kind.xml" >/dev/null
  # A first start outside the measurement: libvirt probes a new emulator's capabilities.
  "${v[@]}" start "bench-$kind" >/dev/null
  "${v[@]}" destroy "bench-$kind" >/dev/null
done
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
for _ in $(seq "$rounds"); do
  for kind in plain wrap; do
    t=$(date +%s%N); "${v[@]}" start "bench-$kind" >/dev/null; echo "$kind start $(ms "$t")"
    t=$(date +%s%N); "${v[@]}" destroy "bench-$kind" >/dev/null; echo "$kind destroy $(ms "$t")"
  done
done >"$dir/times"
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '%-22s %12s %14s\n' "" "start (ms)" "destroy (ms)"
for kind in plain wrap; do
  s=$(awk -v k="$kind" '$1==k && $2=="start" {print $3}' "$dir/times" | median)
  d=$(awk -v k="$kind" '$1==k && $2=="destroy" {print $3}' "$dir/times" | median)
  printf '%-22s %12s %14s\n' "$([[ $kind == plain ]] && echo 'plain QEMU' || echo 'qmptap wrap')" "$s" "$d"
  declare "${kind}_start=$s"
done
msgs=$(cat "$dir"/captures/*.jsonl | grep -c '"type":"msg"' || true)
echo "medians of $rounds interleaved rounds; wrap/plain start = $(echo "scale=2; $wrap_start / $plain_start" | bc)x;" \
  "the wrapped starts recorded $msgs messages in $(ls "$dir"/captures/*.jsonl | wc -l) captures"
