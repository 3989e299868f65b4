#!/usr/bin/env bash
# Fault test of training (docs/training.md, "Checkpoints"): kills `beagle train` and the hosted training worker
# (samples/Beagle.Samples.Worker) at random moments, restarts them until they finish, and checks that every run ends
# with a draft byte-identical to an uninterrupted run's, with no failed start on the way (a corrupt checkpoint or
# jobs.json would show as a failed resume). Bounded: N trials of each kind, at most 4 kills per trial, local files only
# (no network, no listening socket); everything happens under a temporary folder that is deleted at the end.
#
# Usage: bash scripts/fault-train.sh [--trials N (default 5)] [--seed S (default 1)] [--keep DIR]
# Needs stories260K (BEAGLE_MODELS, the user cache, or ../shared next to the checkout) and TinyStories text
# ($BEAGLE_SHARED/data/tinystories, or ../shared).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
trials=5; seed=1; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --trials) trials=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "usage: bash scripts/fault-train.sh [--trials N] [--seed S] [--keep DIR]" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=PASSIVE DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
shared=${BEAGLE_SHARED:-$root/../shared}
if [ -z "${BEAGLE_MODELS:-}" ] && [ -f "$shared/models/stories260K/stories260K.bin" ]; then export BEAGLE_MODELS="$shared/models/stories260K"; fi
text="$shared/data/tinystories/tinystories_val_dev.txt"
[ -f "$text" ] || { echo "no TinyStories text at $text: set BEAGLE_SHARED to the shared folder" >&2; exit 2; }

log=$(mktemp)
for p in src/Beagle.Cli samples/Beagle.Samples.Worker; do
  dotnet build "$p" -c Release -nologo -v quiet -clp:ErrorsOnly >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
done
rm -f "$log"
cli="$root/src/Beagle.Cli/bin/Release/net10.0/beagle.dll"
worker="$root/samples/Beagle.Samples.Worker/bin/Release/net10.0/Beagle.Samples.Worker.dll"

work=${keep:-$(mktemp -d)}
mkdir -p "$work"; cd "$work"
cleanup() { [ -n "$keep" ] || rm -rf "$work"; }
trap cleanup EXIT
RANDOM=$seed
# Small real text: the first 60 stories for the CLI run (~46 steps), 120 for the hosted job (its fixed settings).
awk 'BEGIN{RS="";ORS="\n\n"} NR<=60' "$text" > cli.txt
awk 'BEGIN{RS="";ORS="\n\n"} NR<=120' "$text" > hosted.txt

# The commands, as arrays: run in the background they must be the dotnet process itself (a shell function would run in a
# subshell, and a signal would kill the subshell and orphan the trainer).
train_cmd() {   # train_cmd OUT [--resume]
  cmd=(dotnet "$cli" train --target stories260K --data cli.txt --out "$1" --epochs 2 --seq-len 64 --batch 4 --warmup 2
    --checkpoint-every 3 --eval-prompts 0 --threads 1 "${@:2}")
}
host_cmd() {    # host_cmd JOBS
  cmd=(dotnet "$worker" --target stories260K --no-draft --data hosted.txt --Beagle:Training:JobsFolder="$PWD/$1"
    --Beagle:Training:CheckpointEverySteps=3)
}
# The draft's weights and its description, without the lines that differ by design: the run's own folders and "resume".
digest() { { grep -v '_dir"\|"resume"' "$1"/draft.json; cat "$1"/draft.safetensors; } | sha256sum | cut -c1-16; }
ms() { date +%s%3N; }

# Starts $cmd in the background and kills it with SIGKILL or SIGTERM (even odds): one kill in four at a random moment of
# its first 3 s (start-up, data and features), the others a random 0-2 s after its first checkpoint (mid-training).
# Prints how it ended: "KILL@N" / "TERM@N" (killed, N = the last checkpointed step it reported, "-" for none, and for
# SIGTERM the exit code when it was not the clean one), "resumed@N" when it resumed from step N, "done" when it finished.
run_and_kill() {   # run_and_kill CLEAN_TERM_EXIT_CODE (beagle train: 130; the worker: 0)
  local clean=$1
  : > attempt.log
  "${cmd[@]}" </dev/null >attempt.log 2>&1 &
  local pid=$! sig=KILL; (( RANDOM % 2 )) && sig=TERM
  if (( RANDOM % 4 == 0 )); then
    local end=$(( $(ms) + 300 + RANDOM % 2700 ))
    while [ "$(ms)" -lt "$end" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
  else
    while kill -0 $pid 2>/dev/null && ! grep -q "checkpoint saved at step" attempt.log; do sleep 0.05; done
    local end=$(( $(ms) + RANDOM % 2000 ))
    while [ "$(ms)" -lt "$end" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
  fi
  local how
  if kill -0 $pid 2>/dev/null; then
    kill -s $sig $pid 2>/dev/null; wait $pid; local rc=$?
    how="$sig@$(grep -o "checkpoint saved at step [0-9]*" attempt.log | tail -1 | grep -o "[0-9]*$" || true)"
    [ "${how#*@}" ] || how="${how}-"
    [ $sig = TERM ] && [ $rc != "$clean" ] && how="$how(exit $rc)"
  else
    wait $pid; local rc=$?; how=$([ $rc = 0 ] && echo done || echo "failed(exit $rc)")
  fi
  local from; from=$(grep -o "resuming from step [0-9]*" attempt.log | head -1 | grep -o "[0-9]*$" || true)
  cat attempt.log >>out.log
  echo "${from:+resumed@$from,}$how"
}
run() {
  "${cmd[@]}" </dev/null >attempt.log 2>&1; local rc=$?
  local from; from=$(grep -o "resuming from step [0-9]*" attempt.log | head -1 | grep -o "[0-9]*$" || true)
  cat attempt.log >>out.log
  echo "${from:+resumed@$from,}$([ $rc = 0 ] && echo done || echo "failed(exit $rc)")"
}

fail=0; kills_cli=0; kills_host=0; term_clean=0; term_total=0; hterm_clean=0; hterm_total=0
report() { echo "$@"; }

# --- beagle train ---
t0=$(ms); train_cmd ref; "${cmd[@]}" </dev/null >ref.log 2>&1 || { echo "reference training run failed:"; tail -5 ref.log; exit 1; }
limit_cli=$(( $(ms) - t0 ))
ref_cli=$(digest ref/draft)
report "beagle train: uninterrupted run ${limit_cli} ms, draft $ref_cli"
for i in $(seq 1 "$trials"); do
  out=cli$i; events=""
  for attempt in 1 2 3 4 5; do
    # A checkpoint (or the old one an interrupted swap left) means resume; a kill before the first checkpoint, start again.
    args=(); if [ -d $out/checkpoint ] || compgen -G "$out/.checkpoint.old-*" >/dev/null; then args=(--resume); fi
    train_cmd $out "${args[@]}"
    if [ "$attempt" -lt 5 ]; then r=$(run_and_kill 130); else r=$(run); fi
    events="$events $r"
    case $r in
      *TERM@*) kills_cli=$((kills_cli + 1)); term_total=$((term_total + 1)); [[ $r == *"(exit"* ]] || term_clean=$((term_clean + 1)) ;;
      *KILL@*) kills_cli=$((kills_cli + 1)) ;;
      *done) break ;;
      *) echo "  trial $i: a run failed:"; tail -3 attempt.log; fail=1; break ;;
    esac
  done
  got=$( [ -f $out/draft/draft.safetensors ] && digest $out/draft || echo none)
  [ "$got" = "$ref_cli" ] && verdict=identical || { verdict="DIFFERENT ($got)"; fail=1; }
  report "  trial $i:$events -> draft $verdict"
done

# --- hosted worker ---
t0=$(ms); host_cmd jobs-ref; "${cmd[@]}" </dev/null >ref-host.log 2>&1 || { echo "reference hosted run failed:"; tail -5 ref-host.log; exit 1; }
limit_host=$(( $(ms) - t0 ))
ref_host=$(digest "$(dirname "$(ls jobs-ref/*/draft/draft.safetensors)")")
report "hosted worker: uninterrupted run ${limit_host} ms, draft $ref_host"
for i in $(seq 1 "$trials"); do
  jobs=jobs$i; events=""
  for attempt in 1 2 3 4 5; do
    host_cmd $jobs
    if [ "$attempt" -lt 5 ]; then r=$(run_and_kill 0); else r=$(run); fi
    events="$events $r"
    case $r in
      *TERM@*) kills_host=$((kills_host + 1)); hterm_total=$((hterm_total + 1)); [[ $r == *"(exit"* ]] || hterm_clean=$((hterm_clean + 1)) ;;
      *KILL@*) kills_host=$((kills_host + 1)) ;;
      *done) break ;;
      *) echo "  trial $i: a run failed:"; tail -3 attempt.log; fail=1; break ;;
    esac
  done
  d=$(ls $jobs/*/draft/draft.safetensors 2>/dev/null | head -1)
  got=$( [ -n "$d" ] && digest "$(dirname "$d")" || echo none)
  [ "$got" = "$ref_host" ] && verdict=identical || { verdict="DIFFERENT ($got)"; fail=1; }
  report "  trial $i:$events -> draft $verdict"
done

echo "kills: beagle train $kills_cli (SIGTERM: checkpoint and exit 130 in $term_clean of $term_total), hosted worker $kills_host (SIGTERM: clean exit in $hterm_clean of $hterm_total)"
if [ "$fail" -eq 0 ]; then echo "fault test passed: every interrupted run resumed to a byte-identical draft"; else echo "fault test FAILED (logs: ${keep:-rerun with --keep DIR})"; fi
exit $fail
