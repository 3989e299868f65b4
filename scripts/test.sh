#!/usr/bin/env bash
# The test command (README): builds if needed and runs every test project in Release.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
if [ -z "${BEAGLE_SHARED:-}" ] && [ -d ../shared ]; then export BEAGLE_SHARED="$(cd ../shared && pwd)"; fi
exec dotnet test Beagle.Integrations.sln -c Release "$@"
