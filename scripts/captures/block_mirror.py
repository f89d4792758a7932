#!/usr/bin/env python3
"""Scenario `block-mirror`: a real blockdev-mirror job in qemu-storage-daemon.

Recorded (through the qmptap proxy): negotiation, blockdev-add of a source and a target
qcow2 node, blockdev-mirror sync=full with a speed limit (and a 1 MiB buffer, so that
progress rises smoothly), query-jobs polled every --interval seconds while the job
copies (current-progress rising) until it is ready
(JOB_STATUS_CHANGE created/running/ready and BLOCK_JOB_READY), --ready-polls more polls,
block-job-complete, the job's way to waiting/pending/concluded/null with
BLOCK_JOB_COMPLETED, a query-jobs showing it gone, and blockdev-del of both nodes.

Usage: block_mirror.py --proxy PROXY.sock --source SRC.qcow2 --target TGT.qcow2
                       [--speed BYTES_PER_S] [--buf-size BYTES] [--interval SECS]
"""

import argparse
import asyncio

from common import Events, QMPClient, check, log, run

JOB = "mirror0"


def qcow2(node, path):
    return {"driver": "qcow2", "node-name": node,
            "file": {"driver": "file", "filename": path}}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--speed", type=int, default=16 << 20, help="job speed limit, bytes/s")
    ap.add_argument("--buf-size", type=int, default=1 << 20, help="mirror buffer (bytes in flight)")
    ap.add_argument("--interval", type=float, default=0.4, help="query-jobs poll interval")
    ap.add_argument("--ready-polls", type=int, default=2, help="polls once the job is ready")
    ap.add_argument("--max-polls", type=int, default=100)
    a = ap.parse_args()

    c = QMPClient("qsd")
    await c.connect(a.proxy)
    events = Events(c)
    log(f"connected to {a.proxy}: {c.greeting.QMP.version['qemu']}")

    await c.execute("blockdev-add", qcow2("src", a.source))
    await c.execute("blockdev-add", qcow2("tgt", a.target))
    await c.execute("blockdev-mirror", {"job-id": JOB, "device": "src", "target": "tgt",
                                        "sync": "full", "speed": a.speed,
                                        "buf-size": a.buf_size})

    def job_of(jobs):
        return next((j for j in jobs if j["id"] == JOB), None)

    polls, progress = 0, []
    while True:
        await asyncio.sleep(a.interval)
        job = job_of(await c.execute("query-jobs"))
        polls += 1
        check(job is not None, "the mirror job disappeared")
        progress.append(job["current-progress"])
        log(f"poll {polls}: {job['status']} {job['current-progress']}/{job['total-progress']}")
        if job["status"] == "ready":
            break
        check(polls < a.max_polls, f"job still {job['status']} after {polls} polls")
    await events.wait_for(lambda e: e["event"] == "BLOCK_JOB_READY", 5, "BLOCK_JOB_READY")
    check(len(set(progress)) >= 3, f"too few distinct progress values: {progress}")

    for _ in range(a.ready_polls):
        await asyncio.sleep(a.interval)
        job = job_of(await c.execute("query-jobs"))
        log(f"poll (ready): {job['status']} {job['current-progress']}/{job['total-progress']}")

    await c.execute("block-job-complete", {"device": JOB})
    completed = await events.wait_for(lambda e: e["event"] == "BLOCK_JOB_COMPLETED", 10,
                                      "BLOCK_JOB_COMPLETED")
    check("error" not in completed["data"], f"mirror failed: {completed['data']}")
    await events.wait_for(lambda e: e["event"] == "JOB_STATUS_CHANGE"
                          and e["data"]["status"] == "null", 5, "JOB_STATUS_CHANGE null")
    jobs = await c.execute("query-jobs")
    log(f"query-jobs after completion: {jobs}")
    check(job_of(jobs) is None, "the job is still listed")

    await c.execute("blockdev-del", {"node-name": "tgt"})
    await c.execute("blockdev-del", {"node-name": "src"})

    states = [e["data"]["status"] for e in events.named("JOB_STATUS_CHANGE")]
    log(f"{polls + a.ready_polls} query-jobs polls; job states: {' '.join(states)}")
    for s in ("created", "running", "ready", "waiting", "pending", "concluded", "null"):
        check(s in states, f"no JOB_STATUS_CHANGE to {s}")
    await events.stop()
    await c.disconnect()


if __name__ == "__main__":
    run(main)
