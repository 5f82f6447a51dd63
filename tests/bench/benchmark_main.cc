// main() of the Google Benchmark benchmarks: the process set up as xenkvm-vmm's is (Abseil's
// lock-order checks off: components/base/lock_checks.h), so they measure what a guest gets.
#include "benchmark/benchmark.h"
#include "components/base/lock_checks.h"

int main(int argc, char** argv) {
  xenkvm::base::DisableLockOrderChecks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
