// Exits per second on the kvm accelerator, side by side: a guest looping on OUT (the port-I/O exit
// floor: KVM_RUN, the exit decoded, nothing answered), the same through a call to a stub with the
// hypercall stub's instructions (call, mov, out, ret: the fair floor, since KVM-PVM runs guest
// instructions slowly), and a hypercall through the hypercall page the accelerator fills (the
// registers read, the exit answered in RAX). The ratio hypercall / stub floor is what a hypercall
// costs the VMM: with KVM_CAP_SYNC_REGS the registers come through kvm_run instead of three
// ioctls. Skips without a usable /dev/kvm.
// Not a test: `bazel run -c opt //components/accel:kvm_benchmark`.
#include "benchmark/benchmark.h"
#include "components/accel/emu/testdata/guests.h"
#include "components/accel/kvm/kvm_accelerator.h"
#include "components/kvm/kvm.h"

namespace xenkvm::accel {
namespace {

constexpr uint32_t kLoadAddress = 0x100000;
constexpr uint32_t kHypercallMsr = 0x40000000;

void RunExitLoop(benchmark::State& state, unsigned entry, bool hypercalls) {
  if (absl::Status usable = kvm::KvmUsable(); !usable.ok()) {
    state.SkipWithError(std::string(usable.message()).c_str());
    return;
  }
  auto memory = memory::GuestMemory::Create({{memory::GuestAddress(0), 2 << 20}});
  if (!memory.ok() || !memory->Write(memory::GuestAddress(kLoadAddress), emu_test_guests::kText).ok()) {
    state.SkipWithError("guest memory");
    return;
  }
  auto accelerator = CreateKvmAccelerator(*memory);
  if (!accelerator.ok()) {
    state.SkipWithError(std::string(accelerator.status().message()).c_str());
    return;
  }
  if (hypercalls && !(*accelerator)->EnableHypercallPage(kHypercallMsr).ok()) {
    state.SkipWithError("no hypercall page");
    return;
  }
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
    if (std::holds_alternative<HypercallExit>(*exit)) (void)(*vcpu)->Complete(0);
  }
  state.counters["exits_per_second"] = benchmark::Counter(state.iterations(), benchmark::Counter::kIsRate);
}

void BM_KvmPortIoExit(benchmark::State& state) { RunExitLoop(state, emu_test_guests::k_pio_loop, false); }
void BM_KvmPortIoExitThroughAStub(benchmark::State& state) {
  RunExitLoop(state, emu_test_guests::k_pio_call_loop, false);
}
void BM_KvmHypercallThroughThePage(benchmark::State& state) {
  RunExitLoop(state, emu_test_guests::k_hypercall_page_loop, true);
}

BENCHMARK(BM_KvmPortIoExit)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_KvmPortIoExitThroughAStub)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_KvmHypercallThroughThePage)->UseRealTime()->MinTime(2.0);

}  // namespace
}  // namespace xenkvm::accel
