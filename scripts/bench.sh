#!/usr/bin/env bash
# Runs qmptap's benchmarks with their baselines side by side (see README, "Performance").
#   scripts/bench.sh            all benchmarks
#   scripts/bench.sh proxy      the proxy against a direct connection and socat
#   scripts/bench.sh wire       the decoder against serde_json
#   scripts/bench.sh check      the schema checker (and serde_json parsing) and schema loading
#   scripts/bench.sh replay     replay against a plain client, both on a real QEMU
#   scripts/bench.sh serve      the mock server against QEMU, pipelined
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
