// Exits per second on the emu accelerator: a guest looping on OUT, on a hypercall through the
// CPUID stub a hypercall page holds, and on inline VMCALL; each iteration is one exit handed to
// Run() and completed. The reference, measured in the same run, is a bare Unicorn engine running
// the same OUT loop with an empty hook (no thread hand-off): the ratio is what the exit protocol
// costs. Not a test; run with `bazel run -c opt //components/accel:emu_benchmark`.
#include <unicorn/unicorn.h>

#include "benchmark/benchmark.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/accel/emu/testdata/guests.h"

namespace xenkvm::accel {
namespace {

constexpr uint32_t kLoadAddress = 0x100000;

void RunExitLoop(benchmark::State& state, unsigned entry, bool answer) {
  auto memory = memory::GuestMemory::Create({{memory::GuestAddress(0), 2 << 20}});
  if (!memory.ok() || !memory->Write(memory::GuestAddress(kLoadAddress), emu_test_guests::kText).ok()) {
    state.SkipWithError("guest memory");
    return;
  }
  auto accelerator = CreateEmuAccelerator(*memory);
  auto vcpu = (*accelerator)->CreateVcpu(0, PvhEntry{kLoadAddress + entry, 0});
  if (!vcpu.ok()) {
    state.SkipWithError(std::string(vcpu.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<Exit> exit = (*vcpu)->Run();
    if (!exit.ok() || std::holds_alternative<GuestErrorExit>(*exit)) {
      state.SkipWithError("the guest stopped");
      break;
    }
    if (answer) (void)(*vcpu)->Complete(0);
  }
  state.counters["exits_per_second"] = benchmark::Counter(state.iterations(), benchmark::Counter::kIsRate);
}

void BM_EmuPortIoExit(benchmark::State& state) { RunExitLoop(state, emu_test_guests::k_pio_loop, false); }
void BM_EmuHypercallCpuidStub(benchmark::State& state) {
  RunExitLoop(state, emu_test_guests::k_hypercall_cpuid_loop, true);
}
void BM_EmuInlineVmcall(benchmark::State& state) { RunExitLoop(state, emu_test_guests::k_vmcall_loop, true); }

// Reference: Unicorn alone, 32-bit mode, the same OUT loop with a hook that only counts; each
// uc_emu_start runs a batch of OUTs, so the restart cost is spread as thinly as possible.
struct RawCount {
  uint64_t outs = 0;
  uint64_t stop_at = 0;
};
void OnRawOut(uc_engine* uc, uint32_t, int, uint32_t, void* user) {
  auto* count = static_cast<RawCount*>(user);
  if (++count->outs >= count->stop_at) uc_emu_stop(uc);
}
void BM_ReferenceBareUnicornOutHook(benchmark::State& state) {
  uc_engine* uc = nullptr;
  uc_open(UC_ARCH_X86, UC_MODE_32, &uc);
  uc_mem_map(uc, 0x1000, 0x1000, UC_PROT_ALL);
  const uint8_t loop[] = {0xe6, 0x10, 0xeb, 0xfc};  // out %al, $0x10; jmp loop
  uc_mem_write(uc, 0x1000, loop, sizeof(loop));
  RawCount count;
  uc_hook hook;
  uc_hook_add(uc, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&OnRawOut), &count, 1, 0, UC_X86_INS_OUT);
  constexpr uint64_t kBatch = 10000;
  for (auto _ : state) {
    count.stop_at = count.outs + kBatch;
    if (uc_emu_start(uc, 0x1000, 0x2000, 0, 0) != UC_ERR_OK || count.outs != count.stop_at) {
      state.SkipWithError("the bare engine stopped early");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["exits_per_second"] =
      benchmark::Counter(static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
  uc_close(uc);
}

BENCHMARK(BM_EmuPortIoExit)->UseRealTime();
BENCHMARK(BM_EmuHypercallCpuidStub)->UseRealTime();
BENCHMARK(BM_EmuInlineVmcall)->UseRealTime();
BENCHMARK(BM_ReferenceBareUnicornOutHook)->UseRealTime();

}  // namespace
}  // namespace xenkvm::accel
