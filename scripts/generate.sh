#!/usr/bin/env bash
# The main job (README): build the CLI and generate a story with the default model (stories5M, bundled) and its bundled
# Beagle draft, speculatively where the measured tree budget says drafting pays on this machine (otherwise the tool says
# so on stderr and decodes plainly). Extra arguments go to `beagle generate` (e.g. --prompt "Tom had a red ball" --json,
# --target stories260K, or --tree-tokens 4 --tree-depth 3 --tree-topk 1 to speculate regardless).
#
# Standard output carries only what `beagle generate` prints (the text, or one JSON document with --json): the build is
# silent unless it fails, so `bash scripts/generate.sh --json | python3 -m json.tool` works.
# stories260K (--target stories260K) comes from $BEAGLE_MODELS, else the user cache, else a sha256-checked download; in a
# checkout next to the team's read-only ../shared folder (offline development machines, CI), that folder is used.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE   # libgomp spin-waits collapse under contention (docs/benchmarks.md)
if [ -z "${BEAGLE_MODELS:-}" ] && [ -f ../shared/models/stories260K/stories260K.bin ]; then
  export BEAGLE_MODELS="$(cd ../shared/models/stories260K && pwd)"
fi
log=$(mktemp)
if ! dotnet build src/Beagle.Cli -c Release -nologo -v quiet -clp:ErrorsOnly >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
if [ "$#" -eq 0 ]; then set -- --prompt "Once upon a time" --max-tokens 200; fi
exec dotnet src/Beagle.Cli/bin/Release/net10.0/beagle.dll generate "$@"
