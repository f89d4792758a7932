#!/usr/bin/env bash
# Produce qmptap's bundled REAL captures (captures/NAME.jsonl) from real QEMU processes.
#
#   scripts/captures/make.sh [NAME...]      NAME: migration block-mirror errors-fds-oob
#                                           libvirt-save (default: all four)
#
# For each scenario: start the real QEMU process(es) in a temporary directory, put
# `qmptap record` in front of the monitor the client uses, run the scenario client
# (scripts/captures/*.py, using QEMU's qemu.qmp package) through the proxy, stop qmptap
# with SIGTERM, stop QEMU and move the capture to captures/NAME.jsonl. libvirt-save instead
# has libvirt start QEMU through `qmptap wrap` (as root; scripts/libvirt/daemons.sh).
# Environment: PYTHON (default python3), QEMU (default qemu-system-x86_64), QSD
# (default qemu-storage-daemon), MIG_BANDWIDTH (bytes/s), MIRROR_SPEED (bytes/s).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$ROOT/captures"
QMPTAP="$ROOT/target/debug/qmptap"
PYTHON="${PYTHON:-python3}"
QEMU="${QEMU:-qemu-system-x86_64}"
QSD="${QSD:-qemu-storage-daemon}"
MIG_BANDWIDTH="${MIG_BANDWIDTH:-200000}"
MIRROR_SPEED="${MIRROR_SPEED:-16777216}"
ALL=(migration block-mirror errors-fds-oob libvirt-save)

die() { echo "make.sh: error: $*" >&2; exit 1; }
say() { echo "make.sh: $*" >&2; }

# ---- arguments -------------------------------------------------------------------------
if [[ $# -gt 0 && ( $1 == -h || $1 == --help ) ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi
NAMES=("$@")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=("${ALL[@]}")
for n in "${NAMES[@]}"; do
    case " ${ALL[*]} " in *" $n "*) ;; *) die "unknown capture '$n' (known: ${ALL[*]})";; esac
done

# ---- requirements (no silent skips) ----------------------------------------------------
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }
need "$PYTHON" "Python 3 is required"
need jq "jq is required to check the captures (apt-get install jq)"
"$PYTHON" -c 'import qemu.qmp' 2>/dev/null \
    || die "the Python package qemu.qmp is missing for $PYTHON (pip install qemu.qmp)"
for n in "${NAMES[@]}"; do
    case $n in
        libvirt-save) need virsh "libvirt is required for '$n' (scripts/setup.sh)";;
        migration|errors-fds-oob) need "$QEMU" "QEMU is required for '$n' (apt-get install qemu-system-x86)";;
        block-mirror) need "$QSD" "qemu-storage-daemon is required for '$n' (apt-get install qemu-system-common)"
                      need qemu-img "qemu-img is required for '$n' (apt-get install qemu-utils)"
                      need qemu-io "qemu-io is required for '$n' (apt-get install qemu-utils)";;
    esac
done
if [[ ! -x $QMPTAP ]]; then
    say "building qmptap (cargo build --workspace)"
    (cd "$ROOT" && cargo build --workspace) || die "cargo build --workspace failed"
    [[ -x $QMPTAP ]] || die "$QMPTAP missing after the build"
fi

# ---- process bookkeeping and cleanup ---------------------------------------------------
TMP="$(mktemp -d /tmp/qmptap-captures.XXXXXX)"
PIDS=()
FAILED=()
LIBVIRT_STARTED=0
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    [[ $LIBVIRT_STARTED == 1 ]] && "$ROOT/scripts/libvirt/daemons.sh" stop
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        say "FAILED (exit $rc); logs of the failed run:"
        for f in "$TMP"/*.log; do [[ -s $f ]] && { echo "--- ${f##*/}" >&2; tail -n 40 "$f" >&2; }; done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget() { local pid=$1 p; local keep=(); for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# start LOG CMD... : run CMD in the background, logging to $TMP/LOG; sets $LAST
start() {
    local log=$1; shift
    say "start: $*"
    "$@" >"$TMP/$log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
}

# stop PID WHAT : SIGTERM, wait (10 s at most) and report the exit status in $STATUS
stop() {
    local pid=$1 what=$2
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; say "$what did not stop on SIGTERM; killed"; }
    STATUS=0; wait "$pid" || STATUS=$?
    forget "$pid"
}

wait_socket() {   # PATH PID WHAT
    for _ in $(seq 100); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited before creating $1"
        sleep 0.1
    done
    die "$3 did not create $1 within 10 s"
}

# record NAME UPSTREAM_SOCKET : start qmptap in front of it, listening on $TMP/proxy.sock
record() {
    local name=$1 upstream=$2
    rm -f "$TMP/proxy.sock" "$TMP/$name.jsonl"
    start "qmptap-$name.log" "$QMPTAP" record --listen "unix:$TMP/proxy.sock" \
        --upstream "unix:$upstream" -o "$TMP/$name.jsonl"
    QMPTAP_PID=$LAST
    for _ in $(seq 100); do
        grep -qs 'qmptap: recording' "$TMP/qmptap-$name.log" && return 0
        kill -0 "$QMPTAP_PID" 2>/dev/null || die "qmptap record exited: $(cat "$TMP/qmptap-$name.log")"
        sleep 0.1
    done
    die "qmptap record did not start listening within 10 s"
}

# finish NAME : SIGTERM qmptap (must exit 0), check and publish the capture
finish() {
    local name=$1
    stop "$QMPTAP_PID" "qmptap"
    [[ $STATUS -eq 0 ]] || die "qmptap record exited with status $STATUS: $(cat "$TMP/qmptap-$name.log")"
    publish "$name"
}

# publish NAME : check $TMP/NAME.jsonl and move it to captures/
publish() {
    local name=$1
    local msgs
    msgs=$(grep -c '"type":"msg"' "$TMP/$name.jsonl" || true)
    [[ $msgs -gt 0 ]] || die "capture $name has no messages"
    mkdir -p "$OUT"
    mv -f "$TMP/$name.jsonl" "$OUT/$name.jsonl"
    say "wrote captures/$name.jsonl ($(wc -c <"$OUT/$name.jsonl") bytes, $msgs messages)"
    # The capture must be JSON Lines (one record per line) and readable by qmptap itself.
    # If not, it stays in captures/ for inspection, but the run fails at the end.
    local bad
    bad=$(( $(wc -l <"$OUT/$name.jsonl") \
            - $(jq -R 'fromjson? | select(type == "object") | 1' "$OUT/$name.jsonl" | wc -l) ))
    if [[ $bad -ne 0 ]]; then
        say "ERROR: captures/$name.jsonl has $bad line(s) that are not a JSON object (not JSON Lines)"
        FAILED+=("$name")
    elif ! "$QMPTAP" show --color never "$OUT/$name.jsonl" >"$TMP/show-$name.txt" 2>&1; then
        say "ERROR: qmptap show cannot read captures/$name.jsonl: $(tail -n 1 "$TMP/show-$name.txt")"
        FAILED+=("$name")
    fi
}

client() {   # SCRIPT ARGS... : the scenario client (its progress goes to stderr)
    say "client: $PYTHON $*"
    # In the background plus `wait`, so that a signal to make.sh runs the cleanup at once.
    (cd "$HERE" && exec "$PYTHON" "$@") &
    local pid=$! rc=0
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    [[ $rc -eq 0 ]] || die "scenario client $1 failed (exit $rc)"
}

stop_qemu() {   # PID WHAT
    stop "$1" "$2"
    # QEMU exits 0 on SIGTERM ("terminating on signal 15")
    [[ $STATUS -eq 0 ]] || die "$2 exited with status $STATUS"
}

# ---- scenarios --------------------------------------------------------------------------
scenario_migration() {
    local d="$TMP/migration"; mkdir -p "$d"
    start dst.log "$QEMU" -machine pc,accel=tcg -m 128 -nodefaults -display none \
        -qmp "unix:$d/dst-qmp.sock,server=on,wait=off" -incoming "unix:$d/mig.sock"
    local dst=$LAST
    start src.log "$QEMU" -machine pc,accel=tcg -m 128 -nodefaults -display none \
        -qmp "unix:$d/src-qmp.sock,server=on,wait=off"
    local src=$LAST
    wait_socket "$d/dst-qmp.sock" "$dst" "destination QEMU"
    wait_socket "$d/mig.sock" "$dst" "destination QEMU"
    wait_socket "$d/src-qmp.sock" "$src" "source QEMU"
    record migration "$d/src-qmp.sock"
    client migration.py --proxy "$TMP/proxy.sock" --dest-qmp "$d/dst-qmp.sock" \
        --uri "unix:$d/mig.sock" --bandwidth "$MIG_BANDWIDTH" --interval 0.4
    finish migration
    stop_qemu "$src" "source QEMU"
    stop_qemu "$dst" "destination QEMU"
}

scenario_block_mirror() {
    local d="$TMP/block-mirror"; mkdir -p "$d"
    say "qemu-img create -f qcow2 src.qcow2 64M; qemu-io -c 'write -P 0x55 0 32M'; qemu-img create -f qcow2 tgt.qcow2 64M"
    qemu-img create -q -f qcow2 "$d/src.qcow2" 64M
    qemu-io -f qcow2 -c 'write -P 0x55 0 32M' "$d/src.qcow2" >/dev/null
    qemu-img create -q -f qcow2 "$d/tgt.qcow2" 64M
    start qsd.log "$QSD" --chardev "socket,path=$d/qsd.sock,server=on,wait=off,id=m" \
        --monitor chardev=m
    local qsd=$LAST
    wait_socket "$d/qsd.sock" "$qsd" "qemu-storage-daemon"
    record block-mirror "$d/qsd.sock"
    client block_mirror.py --proxy "$TMP/proxy.sock" --source "$d/src.qcow2" \
        --target "$d/tgt.qcow2" --speed "$MIRROR_SPEED" --interval 0.4
    finish block-mirror
    stop_qemu "$qsd" "qemu-storage-daemon"
    qemu-img compare -q -f qcow2 -F qcow2 "$d/src.qcow2" "$d/tgt.qcow2" \
        || die "the mirror target differs from the source"
    say "qemu-img compare: source and target are identical"
}

scenario_errors_fds_oob() {
    local d="$TMP/errors-fds-oob"; mkdir -p "$d"
    start qemu.log "$QEMU" -machine none -nodefaults -display none \
        -qmp "unix:$d/qmp.sock,server=on,wait=off"
    local q=$LAST
    wait_socket "$d/qmp.sock" "$q" "QEMU"
    record errors-fds-oob "$d/qmp.sock"
    client errors_fds_oob.py --proxy "$TMP/proxy.sock"
    finish errors-fds-oob
    stop_qemu "$q" "QEMU"
}

scenario_libvirt_save() {
    local d="$TMP/libvirt" dom="qmptap-demo"
    mkdir -p "$d/captures"
    "$ROOT/scripts/libvirt/daemons.sh" start "$d/state"
    LIBVIRT_STARTED=1
    # The wrapper also keeps each command line libvirt gives QEMU, for captures/README.md.
    printf '#!/bin/sh\nprintf "%%s\\n" "$@" >%s/argv-$$\nexec %s wrap --capture-dir %s -- /usr/bin/qemu-system-x86_64 "$@"\n' \
        "$d" "$QMPTAP" "$d/captures" >"$d/qemu-wrap"
    chmod 0755 "$d/qemu-wrap"
    cat >"$d/domain.xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>$d/qemu-wrap</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    local v=(virsh -q -c qemu:///system)
    say "virsh: define, start, suspend, resume, qemu-monitor-command query-status, save"
    "${v[@]}" define "$d/domain.xml" >/dev/null
    "${v[@]}" start "$dom" >/dev/null
    "${v[@]}" suspend "$dom" >/dev/null
    "${v[@]}" resume "$dom" >/dev/null
    "${v[@]}" qemu-monitor-command "$dom" '{"execute":"query-status"}' >/dev/null
    "${v[@]}" save "$dom" "$d/vm.save" >/dev/null
    "${v[@]}" undefine "$dom" >/dev/null
    "$ROOT/scripts/libvirt/daemons.sh" stop
    LIBVIRT_STARTED=0
    local capture
    capture=$(ls "$d"/captures/*.jsonl)
    for _ in $(seq 100); do tail -n 1 "$capture" | grep -q '"type":"close"' && break; sleep 0.1; done
    mv "$capture" "$TMP/libvirt-save.jsonl"
    say "libvirt's QEMU command line for the recorded run:"
    grep -L -x -- -daemonize "$d"/argv-* | xargs cat | sed 's/^/    /' >&2
    QMPTAP_PID=
    publish libvirt-save
}

say "$("$QEMU" --version 2>/dev/null | head -n1 || true); $("$PYTHON" -c 'import importlib.metadata as m; print("qemu.qmp", m.version("qemu.qmp"))')"
for n in "${NAMES[@]}"; do
    say "=== $n"
    "scenario_${n//-/_}"
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
    die "capture(s) written but NOT valid: ${FAILED[*]} (see the ERROR lines above)"
fi
say "done: ${NAMES[*]}"
