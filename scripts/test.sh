#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests against real PostgreSQL, S3 servers and
# Ceph RGW (started and stopped by the tests themselves), and the offline deployment checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The deployment checks ask the binaries which variables they read.
cargo build --workspace --locked
cargo nextest run --workspace --locked --no-fail-fast
/opt/egress-py/bin/python -m pytest tests/deploy -q
