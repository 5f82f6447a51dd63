// The emu vCPU's Unicorn hooks: port I/O, CPUID (and the hypercall CPUID), the hypercall-page
// trace, SYSCALL/SYSENTER, the block hook (every stop of the engine), exceptions, MMIO (the local
// APIC's page is the vCPU's own). They run on the emulation thread, inside uc_emu_start.
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/accel/emu/emu_vcpu.h"
#include "components/accel/emu/x86_events.h"

namespace xenkvm::accel::emu {
namespace {

constexpr uint64_t kRflagsIf = 1 << 9;

}  // namespace


uint32_t EmuVcpu::OnIn(uc_engine*, uint32_t port, int size, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  uint64_t value =
      self->Deliver(PortIoExit{false, static_cast<uint16_t>(port), static_cast<uint8_t>(size), 0}, true);
  return static_cast<uint32_t>(size == 4 ? value : value & ((1u << (8 * size)) - 1));
}

void EmuVcpu::OnOut(uc_engine*, uint32_t port, int size, uint32_t value, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  self->Deliver(PortIoExit{true, static_cast<uint16_t>(port), static_cast<uint8_t>(size), value}, false);
}

int EmuVcpu::OnCpuid(uc_engine* uc, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  uint32_t function = static_cast<uint32_t>(self->ReadRegister(UC_X86_REG_EAX));
  if ((function & 0xffff0000) == kEmuHypercallCpuidMagic) {
    HypercallExit call = self->HypercallFromRegisters(function & 0xffff);
    bool long_mode = call.long_mode;
    uint64_t result = self->Deliver(call, true);
    self->WriteHypercallResult(result, long_mode);
    // The instructions after CPUID in this block run before any stop could: a page the call
    // placed (add_to_physmap) is mapped now, for them.
    if (absl::Status synced = self->SyncExtraPages(); !synced.ok()) {
      self->Fatal(absl::StrFormat("emu vCPU %u: %s", self->id_, synced.message()));
      uc_emu_stop(uc);
    }
    return 1;
  }
  uint32_t index = static_cast<uint32_t>(self->ReadRegister(UC_X86_REG_ECX));
  absl::MutexLock lock(&self->cpuid_mutex_);
  auto answer = [self](const CpuidLeaf& leaf) {
    self->WriteRegister(UC_X86_REG_RAX, leaf.eax);
    self->WriteRegister(UC_X86_REG_RBX, leaf.ebx);
    self->WriteRegister(UC_X86_REG_RCX, leaf.ecx);
    self->WriteRegister(UC_X86_REG_RDX, leaf.edx);
  };
  for (const CpuidLeaf& leaf : self->cpuid_) {
    if (leaf.function == function && (!leaf.index || *leaf.index == index)) {
      answer(leaf);
      // The hypervisor leaf that names the hypercall MSR (base + 2): a write to it may follow.
      uint32_t msr = self->vm_.hypercall_msr.load();
      // Armed at once, without a stop: the blocks after this one are not translated yet, so the
      // trace reaches them.
      if (msr != 0 && (function & 0xffff00ff) == 0x40000002 && leaf.ebx == msr && !self->trace_hook_) {
        if (absl::Status armed = self->AddTraceHook(kArmedTraceInstructions); !armed.ok()) {
          self->Fatal(std::string(armed.message()));
        }
      }
      return 1;
    }
  }
  if (function == 1) {
    answer(self->model_leaf1_);
    return 1;
  }
  if (function == 7 && index == 0) {
    answer(self->model_leaf7_);
    return 1;
  }
  if (function == 0x80000001) {
    answer(self->model_ext1_);
    return 1;
  }
  return 0;  // the CPU model answers
}

// Per instruction while the hypercall-page trace is on: WRMSR (0f 30) with ECX = the MSR fills
// the page named by EDX:EAX (Unicorn then drops the write itself, as it does any unknown MSR).
void EmuVcpu::OnTraceInstruction(uc_engine* uc, uint64_t address, uint32_t size, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  if (self->trace_budget_ == 0) {
    if (!self->trace_remove_requested_) {
      self->trace_remove_requested_ = true;
      self->stop_wanted_.store(true);
    }
    return;
  }
  --self->trace_budget_;
  uint32_t msr = self->vm_.hypercall_msr.load();
  if (size != 2 || msr == 0 || static_cast<uint32_t>(self->ReadRegister(UC_X86_REG_RCX)) != msr) return;
  std::array<uint8_t, 2> bytes{};
  if (!self->FetchCode(address, bytes).ok() || bytes[0] != 0x0f || bytes[1] != 0x30) return;
  uint64_t value =
      (self->ReadRegister(UC_X86_REG_RDX) << 32) | (self->ReadRegister(UC_X86_REG_RAX) & 0xffffffff);
  // Low 12 bits: the page index within the hypercall area; xenkvm has one page.
  if ((value & 0xfff) == 0) {
    static const std::vector<uint8_t> page = EmuHypercallPage(kEmuHypercallCpuidMagic);
    (void)self->memory_.Write(memory::GuestAddress(value), page);  // not RAM: ignored, as KVM does
  }
  // The page is ready before the WRMSR even executes; the trace ends at the next block.
  self->trace_remove_requested_ = true;
  self->stop_wanted_.store(true);
}

// Unicorn calls these instead of carrying the instruction out, then skips it; the run loop does
// what the CPU would (the instruction ends its block, so the stop lands right after it).
void EmuVcpu::OnSyscall(uc_engine* uc, void* user) {
  static_cast<EmuVcpu*>(user)->pending_fast_call_ = FastSystemCall::kSyscall;
  uc_emu_stop(uc);
}

void EmuVcpu::OnSysenter(uc_engine* uc, void* user) {
  static_cast<EmuVcpu*>(user)->pending_fast_call_ = FastSystemCall::kSysenter;
  uc_emu_stop(uc);
}

// At the start of every translation block: the one place where stopping the engine is exact.
// Unicorn mishandles a uc_emu_stop that lands while a hook (IN, OUT, CPUID, MMIO) runs: it
// resumes at a stale RIP, re-executing or skipping instructions. So other threads (Kick,
// InjectInterrupt) only set stop_wanted_, and this hook stops the engine between blocks.
void EmuVcpu::OnBlock(uc_engine* uc, uint64_t address, uint32_t, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  if (self->private_blocks_ != 0) {
    if (++self->private_blocks_ > kMaxPrivateBlocks) uc_emu_stop(uc);
    return;
  }
  bool stop = self->stop_wanted_.load(std::memory_order_relaxed) && self->stop_wanted_.exchange(false);
  // A page was added or removed (add_to_physmap, on any vCPU, often in the hypercall this run
  // just returned from): the engine maps it before the guest's next block can touch it.
  stop = stop || self->vm_.extra_generation.load(std::memory_order_relaxed) != self->extra_generation_;
  if (!stop && self->interrupt_window_wanted_.load(std::memory_order_relaxed)) {
    stop = (self->ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;  // the guest opened the window
  }
  if (!stop && self->vm_.run_token.contended()) {
    // Another vCPU's turn after the slice, or at once when this one spins: the same block again
    // and again is a wait loop (PAUSE, which QEMU's round-robin TCG yields at, has no hook), most
    // often for the vCPU that waits for the token.
    if (address == self->last_block_) {
      stop = ++self->block_repeats_ >= kSpinRepeats;
    } else {
      self->last_block_ = address;
      self->block_repeats_ = 0;
    }
    stop = stop || self->vm_.run_token.urgently_wanted() || absl::Now() - self->slice_start_ >= kRunSlice;
  }
  if (!stop) return;
  // RepairBlockStop needs the block's offset in CS; where CS's base cannot be known (real mode and
  // the switches in and out of it, a few instructions in practice) the stop waits for a later block.
  std::optional<uint64_t> base = self->CodeSegmentBase();
  if (!base && !self->exit_requested_.load()) {
    self->stop_wanted_.store(true);
    return;
  }
  self->stop_requested_ = true;
  self->block_stop_ = BlockStop{address - base.value_or(0), self->ReadRegister(UC_X86_REG_RSP)};
  uc_emu_stop(uc);
}

// Exceptions and INT n. Faults arrive with RIP at the instruction, traps and INT n past it, which
// is what the frame must hold either way. CR2 is only right while this hook runs.
void EmuVcpu::OnInterrupt(uc_engine* uc, uint32_t vector, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  if (vector == kVectorInvalidOpcode && self->HandleSerialize()) return;  // runs on, past it
  if (vector == kVectorInvalidOpcode && self->HandleInlineHypercall()) {
    uc_emu_stop(uc);
    return;
  }
  self->pending_event_ = self->EventFromHook(vector);
  uc_emu_stop(uc);
}

// Records the address for the error the failed access ends the vCPU with.
bool EmuVcpu::OnUnmapped(uc_engine*, uc_mem_type type, uint64_t address, int size, int64_t, void* user) {
  static_cast<EmuVcpu*>(user)->unmapped_access_ = address;
  return false;
}

// The local APIC's page is the vCPU's own; the rest of the MMIO hole belongs to the VMM.
uint64_t EmuVcpu::OnMmioRead(uc_engine*, uint64_t offset, unsigned size, void* user) {
  auto* window = static_cast<MmioWindow*>(user);
  const uint64_t address = window->base + offset;
  if (address - kLocalApicBase < kLocalApicSize) return window->vcpu->ApicRead(address - kLocalApicBase, size);
  return window->vcpu->Deliver(MmioExit{false, address, static_cast<uint8_t>(size), 0}, true);
}

void EmuVcpu::OnMmioWrite(uc_engine*, uint64_t offset, unsigned size, uint64_t value, void* user) {
  auto* window = static_cast<MmioWindow*>(user);
  const uint64_t address = window->base + offset;
  if (address - kLocalApicBase < kLocalApicSize) {
    window->vcpu->ApicWrite(address - kLocalApicBase, size, value);
    return;
  }
  window->vcpu->Deliver(MmioExit{true, address, static_cast<uint8_t>(size), value}, false);
}

}  // namespace xenkvm::accel::emu
