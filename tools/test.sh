#!/usr/bin/env bash
# README command (b): installs what is missing, then builds and runs every test twice: once plainly
# and once under AddressSanitizer + UndefinedBehaviorSanitizer (--config=asan).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

run() {
  local label=$1
  shift
  echo "== bazel test $* //... ($label)"
  local status=0
  bazel test "$@" //... || status=$?
  /usr/bin/python3 tools/test_summary.py "$label" "$(bazel info "$@" bazel-testlogs 2>/dev/null)" || status=1
  return $status
}

status=0
run tests || status=1
run asan-tests --config=asan || status=1
exit $status
