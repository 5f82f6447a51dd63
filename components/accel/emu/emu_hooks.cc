// The emu vCPU's Unicorn hooks and intercepted instructions: port I/O; CPUID (and the hypercall
// CPUID), RDMSR/WRMSR and SYSCALL/SYSENTER (through instruction_intercept.h); the block hook (see
// emu_stops.cc); exceptions; MMIO (the local APIC's page is the vCPU's own). They run on the
// emulation thread, inside uc_emu_start.
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/accel/emu/emu_vcpu.h"
#include "components/accel/emu/x86_events.h"
#include "spdlog/spdlog.h"

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

bool EmuVcpu::OnCpuid() {
  uint32_t function = static_cast<uint32_t>(ReadRegister(UC_X86_REG_EAX));
  if ((function & 0xffff0000) == kEmuHypercallCpuidMagic) {
    HypercallExit call = HypercallFromRegisters(function & 0xffff);
    bool long_mode = call.long_mode;
    uint64_t result = Deliver(call, true);
    WriteHypercallResult(result, long_mode);
    // The instructions after CPUID in this block run before any stop could: a page the call
    // placed (add_to_physmap) is mapped now, for them.
    if (absl::Status synced = SyncExtraPages(); !synced.ok()) {
      Fatal(absl::StrFormat("emu vCPU %u: %s", id_, synced.message()));
      uc_emu_stop(uc_);
    }
    return true;
  }
  uint32_t index = static_cast<uint32_t>(ReadRegister(UC_X86_REG_ECX));
  absl::MutexLock lock(&cpuid_mutex_);
  auto answer = [this](const CpuidLeaf& leaf) {
    WriteRegister(UC_X86_REG_RAX, leaf.eax);
    WriteRegister(UC_X86_REG_RBX, leaf.ebx);
    WriteRegister(UC_X86_REG_RCX, leaf.ecx);
    WriteRegister(UC_X86_REG_RDX, leaf.edx);
  };
  for (const CpuidLeaf& leaf : cpuid_) {
    if (leaf.function == function && (!leaf.index || *leaf.index == index)) {
      answer(leaf);
      return true;
    }
  }
  if (function == 1) {
    answer(model_leaf1_);
    return true;
  }
  if (function == 7 && index == 0) {
    answer(model_leaf7_);
    return true;
  }
  if (function == 0x80000001) {
    answer(model_ext1_);
    return true;
  }
  return false;  // the CPU model answers
}

namespace {
constexpr uint32_t kMsrApicBase = 0x1b;
constexpr uint64_t kApicBaseBsp = 1 << 8;
constexpr uint64_t kApicBaseEnable = 1 << 11;
constexpr uint64_t kApicBaseAddress = 0xfee00000;
}  // namespace

uint64_t EmuVcpu::InitialApicBase(uint32_t id) {
  return kApicBaseAddress | kApicBaseEnable | (id == 0 ? kApicBaseBsp : 0);
}

// IA32_APIC_BASE carries the BSP flag, which Linux 6.9 and later read before they trust the MADT
// (without it they assume a crash kernel and keep to one CPU).
std::optional<uint64_t> EmuVcpu::OnRdmsr(uint32_t index) {
  if (index == kMsrApicBase) return apic_base_;
  return std::nullopt;
}

bool EmuVcpu::OnWrmsr(uint32_t index, uint64_t value) {
  if (index == kMsrApicBase) {
    // Only the enable flag is kept, and the APIC stays on regardless (not modelled: moving the
    // page, x2APIC mode, a globally disabled APIC).
    if ((value & ~(kApicBaseEnable | kApicBaseBsp)) != kApicBaseAddress && !std::exchange(apic_base_warned_, true)) {
      SPDLOG_WARN("emu vCPU {}: IA32_APIC_BASE write {:#x} ignored (the xAPIC page stays at {:#x})", id_, value,
                  kApicBaseAddress);
    }
    apic_base_ = (apic_base_ & ~kApicBaseEnable) | (value & kApicBaseEnable);
    return true;
  }
  const uint32_t hypercall_msr = vm_.hypercall_msr.load();
  if (hypercall_msr == 0 || index != hypercall_msr) return false;
  // Low 12 bits: the page index within the hypercall area; xenkvm has one page. WRMSR ends its
  // translation block, so the guest's next block sees the page.
  if ((value & 0xfff) == 0) {
    static const std::vector<uint8_t> page = EmuHypercallPage(kEmuHypercallCpuidMagic);
    (void)memory_.Write(memory::GuestAddress(value), page);  // not RAM: ignored, as KVM does
  }
  return true;
}

// Unicorn moves RIP past these instead of carrying them out; the run loop does what the CPU would
// (the instruction ends its block, so the stop lands right after it).
void EmuVcpu::OnSyscall() {
  pending_fast_call_ = FastSystemCall::kSyscall;
  uc_emu_stop(uc_);
}

void EmuVcpu::OnSysenter() {
  pending_fast_call_ = FastSystemCall::kSysenter;
  uc_emu_stop(uc_);
}

// At the start of every translation block when the VM has more than one vCPU (InstallBlockHook):
// the run token's time slices and spin-waits, and an interrupt waiting for RFLAGS.IF. With one
// vCPU only the private window's blocks come here (the runaway check). Stops from other threads
// need no hook (RequestStop).
void EmuVcpu::OnBlock(uc_engine* uc, uint64_t address, uint32_t, void* user) {
  auto* self = static_cast<EmuVcpu*>(user);
  if (self->private_blocks_ != 0) {
    if (++self->private_blocks_ > kMaxPrivateBlocks) uc_emu_stop(uc);
    return;
  }
  // A page was added or removed (add_to_physmap, on any vCPU, often in the hypercall this run
  // just returned from): the engine maps it before the guest's next block can touch it.
  bool stop = self->vm_.extra_generation.load(std::memory_order_relaxed) != self->extra_generation_;
  if (!stop && self->interrupt_window_wanted_.load(std::memory_order_relaxed)) {
    stop = (self->ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;  // the guest opened the window
  }
  if (!stop && self->vm_.run_token.contended()) {
    // Another vCPU's turn after the slice, or at once when this one spins: the same block again
    // and again is a wait loop (one without PAUSE, which gives the turn up itself: BeforePause),
    // most often for the vCPU that waits for the token.
    if (address == self->last_block_) {
      stop = ++self->block_repeats_ >= kSpinRepeats;
    } else {
      self->last_block_ = address;
      self->block_repeats_ = 0;
    }
    stop = stop || self->vm_.run_token.urgently_wanted() ||
           (++self->contended_blocks_ % kBlocksPerClockRead == 0 &&
            std::chrono::steady_clock::now() - self->slice_start_ >= kRunSlice);
  }
  if (!stop) return;
  // RepairBlockStop needs the block's offset in CS; where CS's base cannot be known (real mode and
  // the switches in and out of it, a few instructions in practice) the stop waits for a later block.
  std::optional<uint64_t> base = self->CodeSegmentBase();
  if (!base) return;
  self->stop_requested_ = true;
  self->block_stop_ = BlockStop{address - *base, self->ReadRegister(UC_X86_REG_RSP)};
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
