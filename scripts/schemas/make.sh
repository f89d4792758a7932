#!/usr/bin/env bash
# Regenerates the schemas built into qmptap (src/schema/builtin.rs):
#   schemas/qemu-7.2.json  query-qmp-schema of Debian's QEMU 7.2, exactly as QEMU returns it
#   schemas/qemu-9.1.json  QEMU 9.1's QAPI sources (../shared/qapi-9.1) compiled by qmptap
set -euo pipefail
cd "$(dirname "$0")/../.."
qemu=${QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || { echo "make.sh: $qemu is required (apt-get install qemu-system-x86)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$qemu" -machine none -nodefaults -display none -qmp "unix:$tmp/qmp.sock,server=on,wait=off" &
pid=$!
for _ in $(seq 100); do [[ -S $tmp/qmp.sock ]] && break; sleep 0.05; done
python3 - "$tmp/qmp.sock" schemas/qemu-7.2.json <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def reply():
    while True:
        m = json.loads(f.readline())
        if "event" not in m: return m
greeting = reply()
f.write(b'{"execute": "qmp_capabilities"}\n'); f.flush(); reply()
f.write(b'{"execute": "query-qmp-schema"}\n'); f.flush()
schema = reply()["return"]
with open(sys.argv[2], "w") as out:
    out.write("[\n" + ",\n".join(json.dumps(e, separators=(",", ":")) for e in schema) + "\n]\n")
v = greeting["QMP"]["version"]["qemu"]
print(f"schemas/qemu-7.2.json: {len(schema)} entries from QEMU {v['major']}.{v['minor']}.{v['micro']}", file=sys.stderr)
PY
cargo run -q -p qmptap-cli -- schema dump --schema ../shared/qapi-9.1 --format model > "$tmp/9.1.json"
mv "$tmp/9.1.json" schemas/qemu-9.1.json
echo "schemas/qemu-9.1.json: compiled from ../shared/qapi-9.1" >&2
