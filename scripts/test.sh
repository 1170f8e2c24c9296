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
# The day protocol under the deterministic simulation, then each deliberate fault in it.
bash scripts/simulate.sh
SIM_MUTANTS=all bash scripts/simulate.sh
/opt/egress-py/bin/python -m pytest tests/deploy -q
# Both images built from the Dockerfiles and run as OpenShift runs them, with the
# image-test profile (unoptimised: release takes ~13 min more; IMAGES_PROFILE=release).
IMAGES_PROFILE=${IMAGES_PROFILE:-image-test} bash tests/images/run.sh
