#!/usr/bin/env python3
"""Capture the raw bytes of one real QMP session, for qmptap's wire tests and benchmark.

How the files beside this script were made (Debian 12, QEMU 7.2 from Debian's package):

    python3 benches/data/make.py benches/data

It starts `qemu-system-x86_64 -machine none -nodefaults -display none -qmp unix:SOCK,server=on,wait=off`,
talks to it over a plain Unix socket (no QMP library, so nothing is re-encoded), and writes
every byte the server sent to `qemu-7.2-s2c.bin` and every byte the client sent to
`qemu-7.2-c2s.bin`. The client side deliberately includes QEMU-only syntax (single-quoted
strings, a pretty-printed command, a lexical error) so that both directions exercise the decoder.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

# Each entry is sent verbatim; the script then reads until that many replies
# ("return" or "error" objects) have arrived, collecting any events on the way.
COMMANDS = [
    (b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\r\n', 1),
    (b'{"execute": "query-status"}\r\n', 1),
    (b'{"execute": "query-version", "id": 1}\r\n', 1),
    (b"{'execute': 'query-name', 'id': 'single-quoted'}\r\n", 1),
    (b'{"execute": "query-commands", "id": {"seq": 2}}\r\n', 1),
    (b'{"execute": "query-qmp-schema", "id": null}\r\n', 1),
    (b'{\n    "execute": "query-kvm",\n    "id": 3.5\n}\n', 1),
    (b'{"execute": "no-such-command", "id": 4}\r\n', 1),
    (b'{"execute": "device_del"}\r\n', 1),
    (b'{"exec-oob": "migrate-pause", "id": "oob-1"}\r\n', 1),
    (b'GARBAGE\r\n', 1),
    (b'[1, 2, 3]\r\n', 1),
    (b'{"execute": "stop"}\r\n', 1),
    (b'{"execute": "cont"}\r\n', 1),
    (b'{"execute": "query-status", "id": "last"}\r\n', 1),
    (b'{"execute": "quit"}\r\n', 1),
]


def replies(buf):
    """Count complete reply lines (QEMU ends every message with CRLF) in buf."""
    n = 0
    for line in buf.split(b"\r\n")[:-1]:
        if not line:
            continue
        obj = json.loads(line)
        if "return" in obj or "error" in obj:
            n += 1
    return n


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = os.path.join(tmp, "qmp.sock")
        qemu = subprocess.Popen([
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{sock_path},server=on,wait=off",
        ])
        for _ in range(100):
            if os.path.exists(sock_path):
                break
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s2c = b""
        c2s = b""
        while b"\r\n" not in s2c:  # the greeting
            s2c += s.recv(65536)
        want = 0
        for cmd, n in COMMANDS:
            s.sendall(cmd)
            c2s += cmd
            want += n
            while replies(s2c) < want:
                data = s.recv(65536)
                if not data:
                    break
                s2c += data
        # After "quit" QEMU sends a SHUTDOWN event and closes the socket.
        s.settimeout(5)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                s2c += data
        except socket.timeout:
            pass
        s.close()
        qemu.wait(timeout=10)
    with open(os.path.join(outdir, "qemu-7.2-s2c.bin"), "wb") as f:
        f.write(s2c)
    with open(os.path.join(outdir, "qemu-7.2-c2s.bin"), "wb") as f:
        f.write(c2s)
    print(f"s2c {len(s2c)} bytes, c2s {len(c2s)} bytes")


if __name__ == "__main__":
    main()
