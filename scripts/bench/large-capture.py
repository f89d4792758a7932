#!/usr/bin/env python3
"""Writes a large capture by repeating the bundled real sessions with fresh times and ids.

    scripts/bench/large-capture.py OUT.jsonl [SIZE_MB]   (default 1024)

Each repetition gives every connection of captures/*.jsonl a new connection id, shifts every
record time and event timestamp past the previous repetition, and makes every command id
unique (`"__qmp#00003"` -> `"r17-__qmp#00003"`), so pairing, latencies and per-command counts
stay those of real sessions. Lines are templated once and filled in per repetition, so the
file is written at disk speed rather than parsed line by line.
"""

import datetime
import glob
import json
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
T_RE = re.compile(r'"t":"([^"]+)"')
SINCE_RE = re.compile(r'"since":"([^"]+)"')
CONN_RE = re.compile(r'"conn":(\d+)')
TS_RE = re.compile(r'"seconds": ?(\d+), ?"microseconds": ?(\d+)')
ID_RE = re.compile(r'"id": ?"')
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def micros(text):
    dt = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc
    )
    return (dt - EPOCH) // datetime.timedelta(microseconds=1)


def fmt(us):
    dt = EPOCH + datetime.timedelta(microseconds=us)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def templates():
    """(header, [(conn_index, t_micros, pieces)]) over every bundled capture, in order."""
    header = None
    lines = []
    conns = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "captures", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.rstrip("\n")
                if i == 0:
                    header = header or line
                    continue
                rec = json.loads(line)
                if rec.get("type") == "gap":
                    continue
                key = (path, rec["conn"])
                conns.setdefault(key, len(conns))
                t = micros(rec["t"])
                # Placeholders: the conn id, the record time, event timestamps, command ids.
                line = CONN_RE.sub('"conn":{conn}', line.replace("{", "{{").replace("}", "}}"), 1)
                line = T_RE.sub('"t":"{t}"', line, 1)
                ts = TS_RE.search(line)
                ts_us = None
                if ts:
                    ts_us = int(ts.group(1)) * 1_000_000 + int(ts.group(2))
                    line = TS_RE.sub('"seconds": {s}, "microseconds": {us}', line, 1)
                line = ID_RE.sub(lambda m: m.group(0) + "{rep}-", line)
                lines.append((conns[key], t, ts_us, line))
    lines.sort(key=lambda l: l[1])
    return header, lines, len(conns)


def main():
    out = sys.argv[1]
    size = int(sys.argv[2] if len(sys.argv) > 2 else 1024) * 1024 * 1024
    header, lines, nconns = templates()
    t0 = min(t for _, t, _, _ in lines)
    span = max(t for _, t, _, _ in lines) - t0 + 1_000_000
    written = 0
    rep = 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        while written < size:
            shift = rep * span
            chunk = []
            for conn, t, ts_us, line in lines:
                if ts_us is not None:
                    s, us = divmod(ts_us + shift, 1_000_000)
                else:
                    s = us = 0
                chunk.append(
                    line.format(
                        conn=rep * nconns + conn + 1,
                        t=fmt(t + shift),
                        s=s,
                        us=us,
                        rep=f"r{rep}",
                    )
                )
            text = "\n".join(chunk) + "\n"
            f.write(text)
            written += len(text)
            rep += 1
    print(f"{out}: {written / 2**20:.0f} MiB, {rep} repetitions, {rep * nconns} connections")


if __name__ == "__main__":
    main()
