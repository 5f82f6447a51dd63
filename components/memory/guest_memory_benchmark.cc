// Cost of checked guest-memory access against a plain memcpy of the same bytes, measured in the
// same run: compare BM_GuestMemoryRead/N with BM_MemcpyReference/N (and the atomics with a plain
// std::atomic). Not a test; run with `bazel run -c opt //components/memory:guest_memory_benchmark`.
#include <atomic>
#include <cstring>
#include <vector>

#include "benchmark/benchmark.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::memory {
namespace {

constexpr uint64_t kMiB = 1 << 20;

GuestMemory& Memory() {
  static GuestMemory* memory = [] {
    auto created = GuestMemory::Create({{GuestAddress(0), 16 * kMiB}, {GuestAddress(32 * kMiB), 16 * kMiB}});
    return new GuestMemory(std::move(created).value());
  }();
  return *memory;
}

void BM_GuestMemoryRead(benchmark::State& state) {
  std::vector<uint8_t> buffer(state.range(0));
  GuestAddress address(32 * kMiB + 4096);
  for (auto _ : state) {
    benchmark::DoNotOptimize(Memory().Read(address, buffer));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_GuestMemoryRead)->Arg(8)->Arg(64)->Arg(4096);

void BM_MemcpyReference(benchmark::State& state) {
  std::vector<uint8_t> buffer(state.range(0));
  uint8_t* source = *Memory().HostAddress(GuestAddress(32 * kMiB + 4096), state.range(0));
  for (auto _ : state) {
    std::memcpy(buffer.data(), source, buffer.size());
    benchmark::DoNotOptimize(buffer.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_MemcpyReference)->Arg(8)->Arg(64)->Arg(4096);

void BM_GuestAtomicFetchOr(benchmark::State& state) {
  GuestAddress word(32 * kMiB + 8192);
  for (auto _ : state) benchmark::DoNotOptimize(Memory().AtomicFetchOr<uint64_t>(word, 1));
}
BENCHMARK(BM_GuestAtomicFetchOr);

void BM_StdAtomicFetchOrReference(benchmark::State& state) {
  std::atomic<uint64_t> word{0};
  for (auto _ : state) benchmark::DoNotOptimize(word.fetch_or(1, std::memory_order_acq_rel));
}
BENCHMARK(BM_StdAtomicFetchOrReference);

}  // namespace
}  // namespace xenkvm::memory
