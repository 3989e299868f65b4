#!/usr/bin/env bash
# The main job (README): build the CLI and generate a story with the default model (stories260K) and its bundled
# Beagle draft, speculatively where the measured tree budget says drafting pays on this machine (on a 2-core CPU it does
# not for stories260K: the tool says so and decodes plainly). Extra arguments go to `beagle generate` (e.g. --prompt
# "Tom had a red ball" --json, or --tree-tokens 4 --tree-depth 3 --tree-topk 1 to speculate regardless).
#
# The default model comes from $BEAGLE_MODELS, else the user cache, else a sha256-checked download. In a checkout
# that sits next to the team's read-only ../shared folder (offline development machines, CI), that folder is used.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE   # libgomp spin-waits collapse under contention (docs/benchmarks.md)
if [ -z "${BEAGLE_MODELS:-}" ] && [ -f ../shared/models/stories260K/stories260K.bin ]; then
  export BEAGLE_MODELS="$(cd ../shared/models/stories260K && pwd)"
fi
dotnet build src/Beagle.Cli -c Release --nologo -v quiet -clp:ErrorsOnly   # prints nothing unless the build fails
if [ "$#" -eq 0 ]; then set -- --prompt "Once upon a time" --max-tokens 200; fi
exec dotnet src/Beagle.Cli/bin/Release/net10.0/beagle.dll generate "$@"
