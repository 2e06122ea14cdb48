#!/usr/bin/env bash
# The replicas load run: 2 000 deployment requests through two replicas
# sharing one Redis; checks exactly 2 000 review calls and a verifying audit
# chain, and prints throughput, p50/p99 latency and each replica's peak RSS.
# Needs redis-server and the Node test support packages (scripts/test
# installs both). LOAD_REQUESTS / LOAD_CONCURRENCY change the size.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -d tests/support/node/node_modules/oidc-provider ]; then
  (cd tests/support/node && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release --bin portcullis --example load-replicas
PORTCULLIS_BIN=target/release/portcullis exec target/release/examples/load-replicas
