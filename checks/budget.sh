#!/usr/bin/env bash
# The resource budget (docs/benchmarks.md), measured on the build the flake
# ships (checks/build-shipped.sh). Arguments and BUDGET_* variables pass
# through to the benchmark; a BUDGET_AGENT already set is measured instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BUDGET_AGENT:-}" ]; then
  BUDGET_AGENT=$(bash checks/build-shipped.sh)
  export BUDGET_AGENT
fi
exec cargo bench --locked -p nixfleet-agent --bench budget "$@"
