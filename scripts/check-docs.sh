#!/usr/bin/env bash
# Checks the docs against the product, cheaply (a few seconds once the CLI is built):
#   1. every relative link in README.md and docs/*.md points to a file or folder that exists;
#   2. README.md, docs/cli.md, docs/integrations.md and docs/benchmarks.md carry no development-machine path and no
#      development history (session numbers, issue numbers);
#   3. the README's layout list names every `beagle` command (Program.cs), and each command's --help renders;
#   4. the README's `bash scripts/generate.sh` commands run, and `--json` output parses (as the README says it does).
# BEAGLE_CLI=path/to/beagle.dll uses that build and runs generate.sh's command without building (the tests do this);
# otherwise scripts/generate.sh builds the CLI itself. Prints one line per problem; exits 1 if there is any.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
problems=0
fail() { echo "check-docs: $*" >&2; problems=$((problems + 1)); }

# 1. Relative links: [text](target) where target is not a URL or an anchor.
for doc in README.md docs/*.md; do
  dir=$(dirname "$doc")
  while IFS= read -r target; do
    target=${target%%#*}
    [ -z "$target" ] && continue
    [ -e "$dir/$target" ] || fail "$doc links to $target, which does not exist"
  done < <(grep -o '\]([^)]*)' "$doc" | sed 's/^](//; s/)$//' | grep -v -E '^(https?:|mailto:|#)')
done
# ...and backquoted repository paths (src/..., docs/..., scripts/..., samples/..., models/..., tests/...) in the main docs.
for doc in README.md docs/cli.md docs/integrations.md; do
  while IFS= read -r path; do
    [ -e "$path" ] || fail "$doc names $path, which does not exist"
  done < <(grep -o '`\(src\|docs\|scripts\|samples\|tests\)/[A-Za-z0-9_./-]*`' "$doc" | tr -d '`' | sort -u)
done

# 2. No development-machine paths or history in the user-facing docs.
for doc in README.md docs/cli.md docs/integrations.md docs/benchmarks.md; do
  grep -n -E '/work/|\.\./shared|[Ss]essions? [0-9]|mid-session|issue #[0-9]|[Ii]ssue'"'"'s' "$doc" | while IFS= read -r line; do
    echo "check-docs: $doc:$line" >&2
  done
  grep -q -E '/work/|\.\./shared|[Ss]essions? [0-9]|mid-session|issue #[0-9]|[Ii]ssue'"'"'s' "$doc" && fail "$doc has development paths or history (lines above)"
done

# The CLI: a given build, or the one generate.sh makes.
if [ -n "${BEAGLE_CLI:-}" ]; then beagle() { dotnet "$BEAGLE_CLI" "$@"; }
else
  built=$(bash scripts/generate.sh --max-tokens 1 2>&1 >/dev/null) || fail "scripts/generate.sh did not build and run the CLI: $built"
  beagle() { dotnet src/Beagle.Cli/bin/Release/net10.0/beagle.dll "$@"; }
fi

# 3. Every (visible) command is in the README's layout list and has a working --help.
commands=$(grep -o 'AddCommand<[A-Za-z]*>("[a-z-]*")' src/Beagle.Cli/Program.cs | sed 's/.*("\(.*\)")/\1/' | grep -v -- '-worker$')
list=$(sed -n '/^src\/Beagle.Cli\//,/^[a-z]/p' README.md)
for c in $commands; do
  grep -q -E "(^|[ :,])$c(,|$| )" <<<"$list" || fail "README's layout list does not name the '$c' command"
  out=$(beagle "$c" --help 2>&1) || fail "beagle $c --help failed: $out"
done

# 4. The README's generate.sh commands, short; and its --json promise.
while IFS= read -r cmd; do
  args=${cmd#bash scripts/generate.sh}
  args=${args%%#*}
  if [ -n "${BEAGLE_CLI:-}" ]; then run() { eval "beagle generate $args" '"$@"'; }; else run() { eval "bash scripts/generate.sh $args" '"$@"'; }; fi
  out=$(run --max-tokens 8 2>/dev/null) || fail "'$cmd --max-tokens 8' failed"
  [ -n "$out" ] || fail "'$cmd --max-tokens 8' printed nothing on stdout"
  run --max-tokens 8 --json 2>/dev/null | python3 -m json.tool >/dev/null || fail "'$cmd --max-tokens 8 --json' is not one JSON document on stdout"
done < <(sed -n '/^```bash/,/^```/p' README.md | grep -E '^bash scripts/generate\.sh')

if [ "$problems" -gt 0 ]; then echo "check-docs: $problems problem(s)" >&2; exit 1; fi
echo "check-docs: ok"
