#!/usr/bin/env python3
"""Appends real records to a capture at a steady rate, for `qmptap tui --follow` to chase.

    scripts/bench/tui-follow.py FILE RATE SECONDS

Writes the header of captures/migration.jsonl, then its records over and over (each
repetition under new connection ids), RATE messages per second in 10 ms batches, for
SECONDS; prints how many msg records it wrote.
"""

import os
import re
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CONN = re.compile(r'"conn":(\d+)')


def main():
    path, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(os.path.join(ROOT, "captures", "migration.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    header, body = lines[0], lines[1:]
    per_batch = max(1, rate // 100)
    written = 0
    rep = 0
    i = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(header + "\n")
        out.flush()
        start = time.monotonic()
        batch = 0
        while time.monotonic() - start < seconds:
            chunk = []
            while len(chunk) < per_batch:
                line = body[i]
                chunk.append(CONN.sub(f'"conn":{rep + 1}', line, 1))
                if '"type":"msg"' in line:
                    written += 1
                i += 1
                if i == len(body):
                    i = 0
                    rep += 1
            out.write("\n".join(chunk) + "\n")
            out.flush()
            batch += 1
            delay = start + batch * 0.01 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(written)


if __name__ == "__main__":
    main()
