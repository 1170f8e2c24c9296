#!/usr/bin/env bash
# The day protocol of egress-dump and egress-sync under the deterministic simulation
# (tests/sim): the programs' real day steps as simulated processes, with injected faults,
# every invariant checked after every store change. See docs/protocol.md.
#
#   SIM_SCHEDULES=N   schedules to run (default 2000); last line `N schedules, V violations`
#   SIM_START=S       the first seed (default 1)
#   SIM_SEED=S        replay one schedule and print its trace (SIM_LOG=1: the logs too)
#   SIM_MUTANTS=all   build the protocol with each deliberate fault and run the schedules
#                     against each; last line `M of M mutants caught`
# A violation prints its seed and trace and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
export SIM_SCHEDULES=${SIM_SCHEDULES:-2000}
if [ -n "${SIM_MUTANTS:-}" ]; then
  # The scripted regression cases with the old behaviour restored: each must break.
  cargo nextest run -p egress-sim --features mutants --locked --no-fail-fast -E 'test(mutant)'
  cargo build -p egress-sim --features mutants --locked --quiet
  exec target/debug/egress-sim
fi
cargo build -p egress-sim --locked --quiet
exec target/debug/egress-sim
