#!/usr/bin/env bash
# README command (b): installs what is missing, then builds and runs every test twice: once plainly
# and once under AddressSanitizer + UndefinedBehaviorSanitizer (--config=asan); then runs each
# libFuzzer target (clang) for a while. Ends with one line: 'total: N passed, N failed, N skipped'.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

summaries=()
run() {
  local label=$1
  shift
  echo "== bazel test $* //... ($label)"
  local status=0 output
  output=$(mktemp)
  bazel test "$@" //... 2>&1 | tee "$output" || status=$?
  local line
  # Bazel's own verdict per target goes along: a test whose cases all passed can still fail (a
  # LeakSanitizer report or a crash at exit), which its gtest report does not show.
  line=$(/usr/bin/python3 tools/test_summary.py "$label" "$(bazel info "$@" bazel-testlogs 2>/dev/null)" "$output") || status=1
  rm -f "$output"
  echo "$line"
  summaries+=("$(echo "$line" | tail -n 1)")
  return $status
}

# Each fuzz target for FUZZ_SECONDS (default 15) from an empty corpus (the loader's seeded with a
# test kernel, XenStore's with a script of real requests); a crash or sanitizer report fails the run.
fuzz() {
  local seconds=${FUZZ_SECONDS:-15} passed=0 failed=0 status=0
  echo "== libFuzzer targets, ${seconds} s each (--config=clang)"
  bazel build --config=clang //tests/fuzz:loader_fuzzer //tests/fuzz:shim_fuzzer //tests/fuzz:xenstore_fuzzer //tests/fuzz:blkif_fuzzer //tests/fuzz:netif_fuzzer 2>&1 \
    | grep -v "Cannot export local symbol" || true
  local bin corpus
  bin=$(bazel info --config=clang bazel-bin 2>/dev/null)
  corpus=$(mktemp -d)
  mkdir -p "$corpus/loader_fuzzer" "$corpus/shim_fuzzer" "$corpus/xenstore_fuzzer" "$corpus/blkif_fuzzer" "$corpus/netif_fuzzer"
  cp "$(bazel info bazel-bin 2>/dev/null)/tests/guests/hello.elf" "$corpus/loader_fuzzer/" 2>/dev/null || true
  cp tests/fuzz/seeds/xenstore_ring_script.bin "$corpus/xenstore_fuzzer/"
  for target in loader_fuzzer shim_fuzzer xenstore_fuzzer blkif_fuzzer netif_fuzzer; do
    if "$bin/tests/fuzz/$target" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$corpus/$target-" "$corpus/$target" \
        > "$corpus/$target.log" 2>&1; then
      passed=$((passed + 1))
      echo "  $target: $(grep -m1 'stat::number_of_executed_units' "$corpus/$target.log" | awk '{print $2}') inputs, no crash"
    else
      failed=$((failed + 1))
      status=1
      echo "  FAILED $target:"
      tail -n 30 "$corpus/$target.log"
    fi
  done
  rm -rf "$corpus"
  echo "fuzz: $passed passed, $failed failed, 0 skipped"
  summaries+=("fuzz: $passed passed, $failed failed, 0 skipped")
  return $status
}

status=0
run tests || status=1
run asan-tests --config=asan || status=1
fuzz || status=1

passed=0 failed=0 skipped=0
for line in "${summaries[@]}"; do
  read -r p f s < <(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/')
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
done
echo "total: $passed passed, $failed failed, $skipped skipped"
exit $status
