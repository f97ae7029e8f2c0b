#!/usr/bin/env bash
# The scripted attacks of TUNNEL.md, in TLS mode 0 and mode 1, against the two
# `tunnel` processes with python3's http.server behind them. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p pool-tunnel --bin tunnel --example attack
target="${CARGO_TARGET_DIR:-target}"
for mode in 0 1; do
    "$target/release/examples/attack" "$mode"
done
