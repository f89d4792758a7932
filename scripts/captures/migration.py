#!/usr/bin/env python3
"""Scenario `migration`: a live migration driven through the SOURCE monitor.

Recorded (source monitor, through the qmptap proxy): negotiation, query-status,
migrate-set-capabilities events=on, migrate-set-parameters max-bandwidth, migrate,
query-migrate polled every --interval seconds until the migration has completed (the
MIGRATION and MIGRATION_PASS events arrive in between), a final query-migrate and
query-status. The destination's monitor is driven directly (not recorded), only to
check that the guest runs there afterwards.

Usage: migration.py --proxy PROXY.sock --dest-qmp DEST.sock --uri unix:MIG.sock
                    [--bandwidth BYTES_PER_S] [--interval SECS]
"""

import argparse
import asyncio

from common import Events, Failed, QMPClient, check, log, run

FINAL = ("completed", "failed", "cancelled")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True, help="qmptap's listening socket (source monitor)")
    ap.add_argument("--dest-qmp", required=True, help="the destination's monitor (not recorded)")
    ap.add_argument("--uri", required=True, help="migration URI the destination listens on")
    ap.add_argument("--bandwidth", type=int, default=1_000_000, help="max-bandwidth, bytes/s")
    ap.add_argument("--interval", type=float, default=0.4, help="query-migrate poll interval")
    ap.add_argument("--max-polls", type=int, default=100)
    a = ap.parse_args()

    src = QMPClient("source")
    await src.connect(a.proxy)
    events = Events(src)
    log(f"connected to {a.proxy}: {src.greeting.QMP.version['qemu']}")

    status = await src.execute("query-status")
    log(f"source status: {status}")
    check(status["status"] == "running", "the source guest is not running")
    await src.execute("migrate-set-capabilities",
                      {"capabilities": [{"capability": "events", "state": True}]})
    await src.execute("migrate-set-parameters", {"max-bandwidth": a.bandwidth})
    await src.execute("migrate", {"uri": a.uri})

    polls = 0
    while True:
        await asyncio.sleep(a.interval)
        info = await src.execute("query-migrate")
        polls += 1
        ram = info.get("ram", {})
        log(f"poll {polls}: {info['status']} transferred={ram.get('transferred')} "
            f"remaining={ram.get('remaining')} dirty-sync-count={ram.get('dirty-sync-count')}")
        if info["status"] in FINAL:
            break
        check(polls < a.max_polls, f"migration still {info['status']} after {polls} polls")
    check(info["status"] == "completed", f"migration ended {info['status']}: {info}")
    await events.wait_for(lambda e: e["event"] == "MIGRATION"
                          and e["data"]["status"] == "completed", 5, "MIGRATION completed")

    info = await src.execute("query-migrate")
    log(f"final: {info['status']} total-time={info.get('total-time')}ms "
        f"downtime={info.get('downtime')}ms transferred={info['ram']['transferred']}")
    status = await src.execute("query-status")
    log(f"source status: {status}")
    check(status["status"] == "postmigrate", f"source status is {status['status']}")

    passes = events.named("MIGRATION_PASS")
    check(passes, "no MIGRATION_PASS event")
    log(f"{polls} polls, {len(events.named('MIGRATION'))} MIGRATION and {len(passes)} "
        f"MIGRATION_PASS events")
    if not 5 <= polls <= 15:
        log(f"warning: {polls} query-migrate polls (aim: 5-15); adjust --bandwidth")
    await events.stop()
    await src.disconnect()

    dst = QMPClient("destination")
    await dst.connect(a.dest_qmp)
    status = await dst.execute("query-status")
    log(f"destination status: {status}")
    await dst.disconnect()
    check(status["status"] == "running", f"destination status is {status['status']}")


if __name__ == "__main__":
    run(main)
