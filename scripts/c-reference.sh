#!/usr/bin/env bash
# Plain greedy tokens/s of llama2.c's reference C implementation (run.c, MIT) on a llama2.c model, for comparison
# with `beagle bench-plain` on the same machine. The project does not ship run.c: pass the path of a run.c from a
# llama2.c checkout (github.com/karpathy/llama2.c).
#   bash scripts/c-reference.sh path/to/run.c [model.bin] [tokenizer.bin] [runs]
# Compiled as llama2.c's README recommends for speed (gcc -Ofast -march=native, one thread, no OpenMP); each run
# decodes 256 positions from "Once upon a time" at temperature 0; prints every run's tokens/s and the median.
set -euo pipefail
runc=${1:?usage: c-reference.sh path/to/run.c [model.bin] [tokenizer.bin] [runs]}
here="$(cd "$(dirname "$0")/.." && pwd)"
model=${2:-$here/models/stories5M/stories5M.bin}
tok=${3:-$here/models/stories5M/tok512.bin}
runs=${4:-5}
bin=$(mktemp -d)/run
gcc -Ofast -march=native -o "$bin" "$runc" -lm
rates=()
for i in $(seq "$runs"); do
  r=$("$bin" "$model" -z "$tok" -t 0 -n 256 -i "Once upon a time" 2>&1 >/dev/null | sed -n 's/^achieved tok\/s: //p')
  [ -n "$r" ] || { echo "run.c printed no tokens/s" >&2; exit 1; }
  rates+=("$r"); echo "run $i: $r tokens/s"
done
printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "median of %d: %.1f tokens/s\n", NR, m}'
