#!/usr/bin/env bash
# Runs qmptap's benchmarks with their baselines side by side (see README, "Performance").
#   scripts/bench.sh            all benchmarks
#   scripts/bench.sh proxy      the proxy against a direct connection and socat
#   scripts/bench.sh wire       the decoder against serde_json
#   scripts/bench.sh check      the schema checker (and serde_json parsing) and schema loading
#   scripts/bench.sh replay     replay against a plain client, both on a real QEMU
#   scripts/bench.sh serve      the mock server against QEMU, pipelined
#   scripts/bench.sh stats      `qmptap stats` on a 1 GiB capture against jq (SIZE_MB=... to change)
#   scripts/bench.sh tui        `qmptap tui --follow` chasing 10 000 messages/s: CPU busy and idle
#   scripts/bench.sh libvirt    `virsh start` of a domain whose QEMU runs under `qmptap wrap`, and plain
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
if [[ $what == all || $what == proxy ]]; then
  cargo build --release -p qmptap-cli
  QMPTAP_BIN=target/release/qmptap cargo bench --bench proxy
fi
if [[ $what == all || $what == wire ]]; then
  cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3
fi
if [[ $what == all || $what == check ]]; then
  cargo bench --bench check -- --warm-up-time 1 --measurement-time 3
fi
if [[ $what == all || $what == replay ]]; then
  cargo bench --bench replay
fi
if [[ $what == all || $what == serve ]]; then
  cargo bench --bench serve
fi
if [[ $what == all || $what == stats ]]; then
  cargo build --release -p qmptap-cli
  size=${SIZE_MB:-1024}
  big=${TMPDIR:-/tmp}/qmptap-large-${size}.jsonl
  [[ -s $big ]] || python3 scripts/bench/large-capture.py "$big" "$size"
  out=$(mktemp -d)
  cat "$big" > /dev/null # both runs start from a warm page cache
  /usr/bin/time -f '%e %M' -o "$out/qmptap.time" \
    target/release/qmptap stats "$big" --format json > "$out/qmptap.json"
  /usr/bin/time -f '%e %M' -o "$out/jq.time" \
    jq -n -c 'reduce (inputs | select(.type == "msg" and .dir == "c2s" and .kind == "command") | .name) as $n ({}; .[$n] += 1)' \
    "$big" > "$out/jq.json"
  # The same per-command counts, or the comparison means nothing.
  jq -S -c '[.commands[] | {(.command): .count}] | add' "$out/qmptap.json" > "$out/a"
  jq -S -c . "$out/jq.json" > "$out/b"
  cmp -s "$out/a" "$out/b" || { echo "per-command counts differ:"; diff "$out/a" "$out/b"; exit 1; }
  read -r qs qk < "$out/qmptap.time"
  read -r js jk < "$out/jq.time"
  printf '%-14s %10s %14s\n' "" "seconds" "peak RSS (MiB)"
  printf '%-14s %10s %14s\n' "qmptap stats" "$qs" "$((qk / 1024))"
  printf '%-14s %10s %14s\n' "jq" "$js" "$((jk / 1024))"
  echo "capture: $(du -m "$big" | cut -f1) MiB; qmptap is $(echo "scale=1; $js / $qs" | bc)x faster than jq"
  rm -r "$out"
fi
if [[ $what == all || $what == tui ]]; then
  cargo build --release -p qmptap-cli
  out=$(mktemp -d)
  cap=$out/follow.jsonl
  : > "$cap"
  session=qmptap-bench-$$
  tmux new-session -d -s "$session" -x 160 -y 45 "target/release/qmptap tui --follow $cap --log $out/log"
  sleep 1
  pid=$(pgrep -n -x qmptap)
  hz=$(getconf CLK_TCK)
  ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
  seconds=10
  t0=$(ticks)
  written=$(python3 scripts/bench/tui-follow.py "$cap" 10600 "$seconds")
  t1=$(ticks)
  sleep 1
  shown=$(tmux capture-pane -p -t "$session" | grep -o '[0-9]* messages' | tail -1 | cut -d' ' -f1)
  t2=$(ticks)
  sleep "$seconds"
  t3=$(ticks)
  tmux send-keys -t "$session" q
  sleep 0.5
  tmux kill-session -t "$session" 2>/dev/null || true
  echo "following about 10 000 messages/s for ${seconds}s: $written messages written, $shown on screen"
  echo "CPU busy: $(( (t1 - t0) * 100 / (hz * seconds) ))% of one core; idle: $(( (t3 - t2) * 100 / (hz * seconds) ))%"
  [[ $written == "$shown" ]] || { echo "the monitor lost messages"; exit 1; }
  rm -r "$out"
fi
if [[ $what == all || $what == libvirt ]]; then
  cargo build --release -p qmptap-cli
  scripts/bench/libvirt-start.sh target/release/qmptap "${ROUNDS:-10}"
fi
