#!/usr/bin/env python3
"""Scenario `errors-fds-oob`: failing commands, fd passing, out-of-band execution,
events and invalid input, against `qemu-system-x86_64 -machine none`.

Connection 1 (qemu.qmp, which enables the "oob" capability because QEMU offers it):
  query-status; failing commands (unknown command, unexpected argument, missing argument,
  wrong argument type, device_del of a missing device, qmp_capabilities again); getfd with
  an fd sent by SCM_RIGHTS, closefd, closefd again (fails); add-fd with an fd, query-fdsets,
  remove-fd, query-fdsets; exec-oob query-yank (succeeds) and exec-oob migrate-pause (fails:
  no migration); a burst of stop/cont (STOP/RESUME events); a command with a
  caller-chosen string id.
Connection 2 (a raw socket, no qemu.qmp), after the first has closed: a command before
  negotiation, qmp_capabilities without oob, then input QEMU must reject or treats
  specially: `GARBAGE`, `[1,2]`, a single-quoted command (QEMU accepts it), ids of
  non-string types (number, object), exec-oob while oob is not enabled, two commands in
  one write and a command spread over several lines.

Usage: errors_fds_oob.py --proxy PROXY.sock
"""

import argparse
import asyncio
import json
import os
import socket
import tempfile
import time

from common import Events, QMPClient, check, expect_error, log, run


async def typed_session(path):
    c = QMPClient("errors-fds-oob")
    await c.connect(path)
    events = Events(c)
    caps = c.greeting.QMP.capabilities
    log(f"connected to {path}: {c.greeting.QMP.version['qemu']}, offered {caps}")
    check("oob" in caps, "QEMU does not offer the oob capability")

    status = await c.execute("query-status")
    log(f"status: {status}")

    # Commands that fail.
    await expect_error(c, "no-such-command", cls="CommandNotFound")
    await expect_error(c, "query-status", {"bogus": 1}, cls="GenericError")
    await expect_error(c, "device_del", {}, cls="GenericError")
    await expect_error(c, "qom-list", {"path": 42}, cls="GenericError")
    await expect_error(c, "device_del", {"id": "no-such-device"}, cls="DeviceNotFound")
    await expect_error(c, "qmp_capabilities", cls="CommandNotFound")

    # getfd / closefd with a file descriptor passed by SCM_RIGHTS.
    rfd, wfd = os.pipe()
    c.send_fd_scm(wfd)
    await c.execute("getfd", {"fdname": "pipe-w"})
    os.close(rfd)
    os.close(wfd)
    await c.execute("closefd", {"fdname": "pipe-w"})
    await expect_error(c, "closefd", {"fdname": "pipe-w"}, cls="GenericError")

    # add-fd / remove-fd (an fd set).
    with tempfile.TemporaryFile() as f:
        c.send_fd_scm(f.fileno())
        added = await c.execute("add-fd", {"fdset-id": 1, "opaque": "qmptap capture"})
    log(f"add-fd: {added}")
    fdsets = await c.execute("query-fdsets")
    log(f"query-fdsets: {fdsets}")
    check(fdsets and fdsets[0]["fds"], "the fd set is empty")
    await c.execute("remove-fd", {"fdset-id": added["fdset-id"], "fd": added["fd"]})
    log(f"query-fdsets after remove-fd: {await c.execute('query-fdsets')}")

    # Out-of-band execution: the only allow-oob commands of QEMU 7.2 are migrate-recover,
    # migrate-pause, yank and query-yank.
    yank = await c.execute("query-yank", oob=True)
    log(f"exec-oob query-yank: {yank}")
    await expect_error(c, "migrate-pause", oob=True, cls="GenericError")

    # A burst of events.
    for _ in range(3):
        await c.execute("stop")
        await c.execute("cont")
    await events.wait_for(lambda e: len(events.named("RESUME")) >= 3, 5, "three RESUME events")
    check(len(events.named("STOP")) == 3, "expected three STOP events")

    # A caller-chosen (string) id; qemu.qmp refuses ids of other types (see connection 2).
    reply = await c._raw({"execute": "query-name", "id": "caller-chosen-id"}, assign_id=False)
    log(f"query-name with id: {dict(reply)}")
    check(reply.get("id") == "caller-chosen-id", "the id was not echoed")

    await events.stop()
    await c.disconnect()


class Raw:
    """A bare UNIX-socket QMP peer: sends bytes, collects whatever QEMU answers."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""

    def replies(self, want=1, timeout=5.0, quiet=0.3):
        """Read until `want` lines arrived, then until `quiet` seconds pass without more."""
        lines, deadline = [], time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.strip():
                    lines.append(json.loads(line))
            now = time.monotonic()
            wait = quiet if len(lines) >= want else deadline - now
            if wait <= 0:
                break
            self.s.settimeout(wait)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                if len(lines) >= want:
                    break
                continue
            if not chunk:
                break
            self.buf += chunk
        check(len(lines) >= want, f"expected {want} replies, got {lines}")
        return lines

    def send(self, data, want=1):
        log(f"raw -> {data!r}")
        self.s.sendall(data)
        got = self.replies(want)
        for r in got:
            log(f"raw <- {json.dumps(r)}")
        return got

    def close(self):
        self.s.close()


def raw_session(path):
    r = Raw(path)
    greeting = r.replies(1)[0]
    log(f"raw greeting: {json.dumps(greeting)}")
    check("QMP" in greeting, "no greeting")

    rep = r.send(b'{"execute": "query-status"}\n')
    check(rep[0]["error"]["class"] == "CommandNotFound", "command before negotiation accepted")
    rep = r.send(b'{"execute": "qmp_capabilities"}\n')
    check(rep[0] == {"return": {}}, "negotiation failed")

    rep = r.send(b"GARBAGE\n")
    check(all("error" in x for x in rep), "GARBAGE was not rejected")
    rep = r.send(b"[1,2]\n")
    check(all("error" in x for x in rep), "[1,2] was not rejected")
    rep = r.send(b"{'execute': 'query-status'}\n")
    check("return" in rep[0], "QEMU rejected the single-quoted command")

    rep = r.send(b'{"execute": "query-name", "id": 42}\n')
    check(rep[0].get("id") == 42, "number id not echoed")
    rep = r.send(b'{"execute": "query-name", "id": {"seq": [1, "x"], "ok": true}}\n')
    check(rep[0].get("id") == {"seq": [1, "x"], "ok": True}, "object id not echoed")
    rep = r.send(b'{"exec-oob": "query-yank", "id": "oob-off"}\n')
    check("error" in rep[0], "exec-oob accepted without the oob capability")

    rep = r.send(b'{"execute": "query-name", "id": "a"}{"execute": "query-name", "id": "b"}',
                 want=2)
    check([x.get("id") for x in rep] == ["a", "b"], "two commands in one write")
    rep = r.send(b'{\n  "execute": "query-status",\n  "id": "multi-line"\n}\n')
    check(rep[0].get("id") == "multi-line", "multi-line command")
    r.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    a = ap.parse_args()
    await typed_session(a.proxy)
    log("connection 1 closed; raw connection 2")
    await asyncio.to_thread(raw_session, a.proxy)


if __name__ == "__main__":
    run(main)
