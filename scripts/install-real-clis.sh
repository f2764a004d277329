#!/usr/bin/env bash
# Installs the four real agent CLIs (claude, gemini, codex, droid) at the versions pinned in
# tests/real-cli/package-lock.json into a project-local prefix, for the real-CLI end-to-end
# tests (bins/broker/tests/e2e/real_cli.rs). Nothing is installed globally.
#
#   scripts/install-real-clis.sh [PREFIX]
#
# PREFIX defaults to $KOKINO_REAL_CLI_DIR, else ./.real-clis (gitignored). The CLIs end up in
# PREFIX/node_modules/.bin; the tests read KOKINO_REAL_CLI_DIR=PREFIX.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-${KOKINO_REAL_CLI_DIR:-$root/.real-clis}}"

if ! command -v npm >/dev/null 2>&1; then
  echo "install-real-clis: npm not found; the real-CLI tests will be skipped" >&2
  exit 1
fi

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
lock="$root/tests/real-cli/package-lock.json"
# A second run with the same lock file is a no-op: the copy of the lock file in the prefix says
# what is installed there.
if [ -x "$prefix/node_modules/.bin/droid" ] && cmp -s "$lock" "$prefix/.installed-lock.json"; then
  echo "install-real-clis: up to date in $prefix"
  exit 0
fi
cp "$root/tests/real-cli/package.json" "$lock" "$prefix/"
# `npm install` next to the lock file installs the locked versions (every direct dependency is
# also pinned exactly in package.json). Not `npm ci`: it refuses this lock file because
# @factory/cli 0.225.1 names platform packages at 0.225.1 that were never published (the linux
# x64 binary is 0.225.2, pinned in package.json). Install scripts are not needed (the CLIs ship
# their native binaries as optional dependencies) except Claude Code's, which copies its native
# binary over the `bin/claude.exe` placeholder; npm 11 asks for script approvals, so run all of
# them off and that one by hand, for the same result on every npm.
(cd "$prefix" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error)
(cd "$prefix/node_modules/@anthropic-ai/claude-code" && node install.cjs)
cp "$lock" "$prefix/.installed-lock.json"
for cli in claude gemini codex droid; do
  printf 'install-real-clis: %-6s %s\n' "$cli" "$("$prefix/node_modules/.bin/$cli" --version 2>&1 | head -n1)"
done
