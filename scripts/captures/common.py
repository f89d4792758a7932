"""Shared helpers for the capture scenario clients (scripts/captures/*.py).

Only the standard library and QEMU's own QMP client (``qemu.qmp`` from PyPI) are used.
"""

import asyncio
import sys
import time

try:
    from qemu.qmp import QMPClient, ExecuteError  # noqa: F401  (re-exported)
except ImportError as err:  # make.sh checks this too, but fail loudly if run by hand
    sys.exit(f"error: the Python package qemu.qmp is required (pip install qemu.qmp): {err}")

_T0 = time.monotonic()


def log(*args):
    """Progress on stderr, with seconds since the client started."""
    print(f"[{time.monotonic() - _T0:6.2f}s]", *args, file=sys.stderr, flush=True)


class Failed(Exception):
    """The scenario did not produce what it is meant to record."""


def check(cond, what):
    if not cond:
        raise Failed(what)


class Events:
    """Collects every event of a QMPClient in the background (in arrival order)."""

    def __init__(self, client):
        self.seen = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._run(client))

    async def _run(self, client):
        async for ev in client.events:
            self.seen.append(ev)
            data = ev.get("data")
            log(f"event {ev['event']}" + (f" {dict(data)}" if data else ""))
            self._new.set()

    def named(self, name):
        return [ev for ev in self.seen if ev["event"] == name]

    async def wait_for(self, pred, timeout, what):
        """Wait until an event satisfying pred has been seen (also one seen earlier)."""
        deadline = time.monotonic() + timeout
        while True:
            self._new.clear()
            for ev in self.seen:
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def stop(self):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def expect_error(client, cmd, args=None, cls=None, oob=False):
    """Run a command that must fail; return the error (class, desc)."""
    try:
        ret = await client.execute(cmd, args, oob=oob)
    except ExecuteError as err:
        log(f"{cmd}: error {err.error_class}: {err.error.error.desc}")
        if cls is not None:
            check(err.error_class == cls, f"{cmd}: expected {cls}, got {err.error_class}")
        return err
    raise Failed(f"{cmd} {args} was expected to fail but returned {ret!r}")


def run(main):
    """Run an async main; exit 1 with a clear message if the scenario failed."""
    try:
        asyncio.run(main())
    except Failed as err:
        sys.exit(f"error: scenario failed: {err}")
