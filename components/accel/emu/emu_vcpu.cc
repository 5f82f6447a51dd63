#include "components/accel/emu/emu_vcpu.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/accel/emu/x86_events.h"
#include "components/base/status.h"
#include "spdlog/spdlog.h"

namespace xenkvm::accel::emu {
namespace {

// The end address of every guest run: one the guest can never reach. After each run Unicorn
// translates end - 1 through the guest's page tables to drop the translated code there, which
// writes CR2 when that address is unmapped and discards the code of its page when it is mapped (the
// kernel's top page for ~0). A non-canonical end - 1 fails the translation with #GP before either
// (and a 32-bit EIP never equals it).
constexpr uint64_t kNeverReached = 0x8000000000000001;
constexpr uint32_t kMsrEfer = 0xc0000080;
constexpr uint64_t kRflagsIf = 1 << 9;

// Unicorn's register ids for the fields of Registers (RIP last, so a write moves it after the rest).
constexpr std::pair<int, uint64_t Registers::*> kRegisterFields[] = {
    {UC_X86_REG_RAX, &Registers::rax},    {UC_X86_REG_RBX, &Registers::rbx},
    {UC_X86_REG_RCX, &Registers::rcx},    {UC_X86_REG_RDX, &Registers::rdx},
    {UC_X86_REG_RSI, &Registers::rsi},    {UC_X86_REG_RDI, &Registers::rdi},
    {UC_X86_REG_RSP, &Registers::rsp},    {UC_X86_REG_RBP, &Registers::rbp},
    {UC_X86_REG_R8, &Registers::r8},      {UC_X86_REG_R9, &Registers::r9},
    {UC_X86_REG_R10, &Registers::r10},    {UC_X86_REG_R11, &Registers::r11},
    {UC_X86_REG_R12, &Registers::r12},    {UC_X86_REG_R13, &Registers::r13},
    {UC_X86_REG_R14, &Registers::r14},    {UC_X86_REG_R15, &Registers::r15},
    {UC_X86_REG_RFLAGS, &Registers::rflags}, {UC_X86_REG_RIP, &Registers::rip},
};

}  // namespace

absl::Status UcError(uc_err err, absl::string_view call) {
  return absl::InternalError(absl::StrCat("unicorn ", call, ": ", uc_strerror(err)));
}

absl::StatusOr<std::unique_ptr<EmuVcpu>> EmuVcpu::Create(uint32_t id, EmuVmState& vm,
                                                         std::optional<PvhEntry> boot) {
  if (id > 0xfe) {
    return absl::InvalidArgumentError(absl::StrFormat("emu: vCPU id %u has no xAPIC ID (at most 254)", id));
  }
  vm.vcpus_created.fetch_add(1);
  auto vcpu = std::unique_ptr<EmuVcpu>(new EmuVcpu(id, vm));
  XENKVM_RETURN_IF_ERROR(vcpu->ResetEngine());
  if (boot) {
    XENKVM_RETURN_IF_ERROR(vcpu->Boot(BuildBootTrampoline(*boot)));
    vcpu->started_ = true;
  } else {
    vcpu->awaiting_sipi_ = true;  // an application processor after RESET
  }
  {
    absl::MutexLock lock(&vm.vcpus_mutex);
    if (vm.vcpus.contains(id)) return absl::AlreadyExistsError(absl::StrFormat("emu: vCPU %u exists", id));
    vm.vcpus[id] = vcpu.get();
  }
  return vcpu;
}

EmuVcpu::~EmuVcpu() {
  {
    absl::MutexLock lock(&vm_.vcpus_mutex);
    if (auto it = vm_.vcpus.find(id_); it != vm_.vcpus.end() && it->second == this) vm_.vcpus.erase(it);
  }
  {
    absl::MutexLock lock(&mutex_);
    exiting_ = true;
  }
  exit_requested_.store(true);
  // Suspended in an exit: let the emulation unwind (every hand-off now returns at once, and stops
  // the engine) so nothing on its stack is left behind.
  if (emulation_.started() && !emulation_.finished()) emulation_.Resume();
  {
    absl::MutexLock lock(&engine_mutex_);
    watchdog_exit_ = true;
  }
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  if (timer_thread_.joinable()) timer_thread_.join();
  if (uc_ != nullptr) uc_close(uc_);
}

absl::StatusOr<Exit> EmuVcpu::Run() {
  if (awaiting_value_ && !value_.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "emu vCPU ", id_, ": the last exit asks for a value; answer it with Complete() first"));
  }
  // The guest runs on this thread, on the emulation's own stack, until its next exit.
  if (!std::exchange(thread_named_, true)) NameVcpuThread(id_);
  emulation_.Resume();
  if (!exit_) return absl::InternalError(absl::StrCat("emu vCPU ", id_, ": the emulation ended without an exit"));
  Exit exit = std::move(*exit_);
  exit_.reset();
  return exit;
}

absl::Status EmuVcpu::Complete(uint64_t value) {
  if (!awaiting_value_) {
    return absl::FailedPreconditionError(
        absl::StrCat("emu vCPU ", id_, ": Complete() but the last exit asked for no value"));
  }
  value_ = value;
  return absl::OkStatus();
}

absl::StatusOr<Registers> EmuVcpu::GetRegisters() {
  Registers registers;
  for (const auto& [reg, field] : kRegisterFields) registers.*field = ReadRegister(reg);
  return registers;
}

absl::Status EmuVcpu::SetRegisters(const Registers& registers) {
  for (const auto& [reg, field] : kRegisterFields) {
    uint64_t value = registers.*field;
    if (uc_err err = uc_reg_write(uc_, reg, &value); err != UC_ERR_OK) return UcError(err, "uc_reg_write");
  }
  return absl::OkStatus();
}

absl::StatusOr<ControlRegisters> EmuVcpu::GetControlRegisters() {
  ControlRegisters c;
  c.cr0 = ReadRegister(UC_X86_REG_CR0);
  c.cr2 = cr2_;
  c.cr3 = ReadRegister(UC_X86_REG_CR3);
  c.cr4 = ReadRegister(UC_X86_REG_CR4);
  c.efer = ReadMsr(kMsrEfer);
  c.cs_selector = static_cast<uint16_t>(ReadRegister(UC_X86_REG_CS));
  c.cpl = Cpl();
  c.long_mode = LongMode();
  return c;
}

absl::StatusOr<uint64_t> EmuVcpu::TranslateLinear(uint64_t linear) {
  return accel::TranslateLinear(memory_, Paging(), linear);
}

absl::Status EmuVcpu::SetCpuid(std::vector<CpuidLeaf> leaves) {
  for (const CpuidLeaf& leaf : leaves) {
    if ((leaf.function & 0xffff0000) == kEmuHypercallCpuidMagic) {
      return absl::InvalidArgumentError(absl::StrFormat("CPUID leaf %#x is reserved for emu hypercalls (%#x..%#x)",
                                                        leaf.function, kEmuHypercallCpuidMagic,
                                                        kEmuHypercallCpuidMagic | 0xffff));
    }
  }
  absl::MutexLock lock(&cpuid_mutex_);
  cpuid_ = std::move(leaves);
  return absl::OkStatus();
}

absl::Status EmuVcpu::Start(const PvhEntry& boot) {
  absl::MutexLock lock(&mutex_);
  if (started_ || start_request_) {
    return absl::FailedPreconditionError(absl::StrCat("emu vCPU ", id_, " is already started"));
  }
  start_request_ = StartRequest{.pvh = boot};
  awaiting_sipi_ = false;
  return absl::OkStatus();
}

void EmuVcpu::Kick() {
  {
    absl::MutexLock lock(&mutex_);
    kick_ = true;
  }
  RequestStop();
}

// ---- Setup

absl::Status EmuVcpu::Open() {
  if (uc_err err = uc_open(UC_ARCH_X86, UC_MODE_64, &uc_); err != UC_ERR_OK) {
    uc_ = nullptr;
    return UcError(err, "uc_open(UC_ARCH_X86, UC_MODE_64)");
  }
  // Unicorn zeroes the whole translation buffer at every flush (QEMU does not), and this backend
  // flushes after a guest's SERIALIZE (HandleSerialize): with Unicorn's default 1 GiB, Debian's
  // kernel spent 60% of its boot zeroing (and the VMM held 1 GiB of it). On that boot, with one
  // vCPU and with two, 32 MiB (QEMU's default for years) was fastest: 64 MiB 4-8% slower, 16-24
  // MiB slower in its userspace (flushes of a full buffer).
  constexpr uint32_t kTranslationBufferBytes = 32u << 20;
  if (uc_err err = uc_ctl_set_tcg_buffer_size(uc_, kTranslationBufferBytes); err != UC_ERR_OK) {
    return UcError(err, "uc_ctl_set_tcg_buffer_size");
  }
  for (const memory::GuestRegion& region : memory_.regions()) {
    if (region.start().value() < kWindowBase + kWindowSize && region.last().value() >= kWindowBase) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "emu accelerator: guest RAM at %#x overlaps the backend's private window %#x..%#x",
          region.start().value(), kWindowBase, kWindowBase + kWindowSize - 1));
    }
    if (uc_err err = uc_mem_map_ptr(uc_, region.start().value(), region.size(), UC_PROT_ALL, region.host_address());
        err != UC_ERR_OK) {
      return UcError(err, absl::StrFormat("uc_mem_map_ptr(guest RAM at %#x)", region.start().value()));
    }
  }
  return absl::OkStatus();
}

absl::Status EmuVcpu::MapWindow(const std::vector<WindowPiece>& pieces) {
  if (window_mmio_mapped_) {
    uc_mem_unmap(uc_, kWindowBase, kWindowSize);
    window_mmio_mapped_ = false;
  }
  if (uc_err err = uc_mem_map(uc_, kWindowBase, kWindowSize, UC_PROT_ALL); err != UC_ERR_OK) {
    return UcError(err, "uc_mem_map(private window)");
  }
  for (const WindowPiece& piece : pieces) {
    if (uc_err err = uc_mem_write(uc_, piece.address, piece.bytes.data(), piece.bytes.size()); err != UC_ERR_OK) {
      UnmapWindow();
      return UcError(err, "uc_mem_write(private window)");
    }
  }
  return absl::OkStatus();
}

void EmuVcpu::UnmapWindow() {
  uc_mem_unmap(uc_, kWindowBase, kWindowSize);
  if (window_mmio_ == nullptr) return;  // still setting up: MapMmioWindows shows it
  if (absl::Status shown = ShowWindowAsMmio(); !shown.ok()) {
    spdlog::warn("emu vCPU {}: {} (guest accesses to {:#x}..{:#x} will fail)", id_, std::string(shown.message()), kWindowBase,
                 kWindowBase + kWindowSize - 1);
  }
}

absl::Status EmuVcpu::ShowWindowAsMmio() {
  if (uc_err err = uc_mmio_map(uc_, kWindowBase, kWindowSize, &EmuVcpu::OnMmioRead, window_mmio_.get(),
                               &EmuVcpu::OnMmioWrite, window_mmio_.get());
      err != UC_ERR_OK) {
    return UcError(err, "uc_mmio_map(private window)");
  }
  window_mmio_mapped_ = true;
  return absl::OkStatus();
}

absl::Status EmuVcpu::RunPrivate(uint64_t start, uint64_t until, absl::string_view what) {
  // No instruction count (a count installs a per-instruction hook that stays for the engine's
  // life) and no kicks (OnBlock leaves them for the guest's run): the code is a few blocks, and
  // OnBlock stops it as a runaway after kMaxPrivateBlocks, so the vCPU can never hang in it.
  private_blocks_ = 1;
  stop_requested_ = false;
  uc_err err = uc_emu_start(uc_, start, until, 0, 0);
  const bool runaway = private_blocks_ > kMaxPrivateBlocks;
  private_blocks_ = 0;
  stop_requested_ = false;
  block_stop_.reset();
  if (err != UC_ERR_OK) return UcError(err, absl::StrCat("uc_emu_start(", what, ")"));
  uint64_t from = ReadRegister(UC_X86_REG_RIP);
  if (!(ReadRegister(UC_X86_REG_CR0) & 1)) from += ReadRegister(UC_X86_REG_CS) << 4;  // real mode: linear
  if (from != until || pending_event_ || runaway) {
    std::string why = runaway ? absl::StrFormat(" (still running after %u blocks)", kMaxPrivateBlocks) : "";
    if (pending_event_) {
      absl::StrAppendFormat(&why, " (exception %u, error code %#x, address %#x)", pending_event_->vector,
                            pending_event_->error_code.value_or(0), pending_event_->cr2.value_or(0));
    }
    pending_event_.reset();
    return absl::InternalError(
        absl::StrFormat("emu accelerator: the %s stopped at %#x instead of %#x%s", what, from, until, why));
  }
  return absl::OkStatus();
}

// Runs CPUID leaf 1 on the bare engine (before any hook) to learn the CPU model's answer, which
// OnCpuid then gives with the hypervisor bit (ECX[31], as KVM shows it) and this vCPU's APIC ID;
// and locates the engine's exception-in-flight record (exception_record.h).
absl::Status EmuVcpu::ProbeModel() {
  XENKVM_RETURN_IF_ERROR(MapWindow({{kWindowBase, {0x0f, 0xa2}}}));  // cpuid
  auto probe = [this](uint64_t leaf, uint64_t subleaf) {
    uc_reg_write(uc_, UC_X86_REG_RAX, &leaf);
    uc_reg_write(uc_, UC_X86_REG_RCX, &subleaf);
    uc_err err = uc_emu_start(uc_, kWindowBase, kWindowBase + 2, 0, 0);
    return std::make_pair(err, CpuidLeaf{static_cast<uint32_t>(leaf), std::nullopt,
                                         static_cast<uint32_t>(ReadRegister(UC_X86_REG_RAX)),
                                         static_cast<uint32_t>(ReadRegister(UC_X86_REG_RBX)),
                                         static_cast<uint32_t>(ReadRegister(UC_X86_REG_RCX)),
                                         static_cast<uint32_t>(ReadRegister(UC_X86_REG_RDX))});
  };
  auto [err, leaf1] = probe(1, 0);
  model_leaf1_ = leaf1;
  model_leaf1_.ebx = (leaf1.ebx & 0x00ffffff) | (id_ << 24);
  model_leaf1_.ecx |= 1u << 31;
  // The local APIC is the backend's xAPIC (emu_lapic.cc): no x2APIC or TSC-deadline timer, whose
  // MSRs Unicorn cannot hook.
  model_leaf1_.edx |= 1u << 9;
  model_leaf1_.ecx &= ~((1u << 21) | (1u << 24));
  auto [err7, leaf7] = probe(7, 0);
  if (err == UC_ERR_OK) err = err7;
  auto [err_ext1, ext1] = probe(0x80000001, 0);
  if (err == UC_ERR_OK) err = err_ext1;
  model_ext1_ = ext1;
  // SERIALIZE (leaf 7 EDX bit 14) is the backend's own: see HandleSerialize.
  model_leaf7_ = leaf7;
  model_leaf7_.index = 0;
  model_leaf7_.edx |= 1u << 14;
  for (CpuidLeaf* leaf : {&model_leaf1_, &model_leaf7_, &model_ext1_}) {
    CpuidRegisters registers{leaf->eax, leaf->ebx, leaf->ecx, leaf->edx};
    ApplyCpuTemplate(vm_.cpu_template, leaf->function, leaf->index.value_or(0), registers);
    leaf->ebx = registers.ebx, leaf->ecx = registers.ecx, leaf->edx = registers.edx;
  }
  UnmapWindow();
  absl::StatusOr<ExceptionRecord> record = ExceptionRecord::For(uc_);
  if (err != UC_ERR_OK) return UcError(err, "uc_emu_start(CPUID probe)");
  if (!record.ok()) return record.status();
  exception_record_ = std::move(*record);
  return absl::OkStatus();
}

absl::Status EmuVcpu::Boot(const BootTrampoline& trampoline) {
  XENKVM_RETURN_IF_ERROR(MapWindow(trampoline.pieces));
  WriteRegister(UC_X86_REG_RSP, trampoline.stack);
  absl::Status ran = RunPrivate(trampoline.start, trampoline.until, "boot trampoline");
  UnmapWindow();
  XENKVM_RETURN_IF_ERROR(ran);
  WriteRegister(UC_X86_REG_RAX, 0);
  WriteRegister(UC_X86_REG_RFLAGS, 0x2);
  engine_used_ = true;
  return absl::OkStatus();
}

absl::Status EmuVcpu::StartFrom(const StartRequest& start) {
  if (engine_used_) XENKVM_RETURN_IF_ERROR(ResetEngine());
  return Boot(start.pvh ? BuildBootTrampoline(*start.pvh) : BuildStartupTrampoline(start.sipi_vector));
}

// A fresh engine in Unicorn's reset state, with the guest's memory, MMIO windows and hooks.
absl::Status EmuVcpu::ResetEngine() {
  if (uc_ != nullptr) uc_close(uc_);
  uc_ = nullptr;
  mmio_windows_.clear();
  window_mmio_.reset();
  window_mmio_mapped_ = false;
  extra_shown_.clear();
  extra_generation_ = 0;
  block_hook_ = 0;  // went with the engine
  exception_record_.reset();
  flush_translations_ = false;
  cr2_ = 0;
  engine_used_ = false;
  XENKVM_RETURN_IF_ERROR(Open());
  XENKVM_RETURN_IF_ERROR(ProbeModel());
  XENKVM_RETURN_IF_ERROR(MapMmioWindows());
  return InstallHooks();
}

// Every page below 4 GiB that is not RAM is MMIO: a load or store there becomes an MmioExit. That
// includes the private window (the top 32 KiB) while the backend's own code is not in it.
absl::Status EmuVcpu::MapMmioWindows() {
  uint64_t cursor = 0;
  for (const memory::GuestRegion& region : memory_.regions()) {
    if (region.start().value() >= kWindowBase) break;
    XENKVM_RETURN_IF_ERROR(MapMmio(cursor, region.start().value()));
    cursor = region.last().value() + 1;
  }
  XENKVM_RETURN_IF_ERROR(MapMmio(cursor, kWindowBase));
  window_mmio_ = std::make_unique<MmioWindow>(MmioWindow{this, kWindowBase, kWindowBase + kWindowSize});
  return ShowWindowAsMmio();
}

absl::Status EmuVcpu::MapMmio(uint64_t start, uint64_t end) {
  if (start >= end) return absl::OkStatus();
  auto window = std::make_unique<MmioWindow>(MmioWindow{this, start, end});
  if (uc_err err = uc_mmio_map(uc_, start, end - start, &EmuVcpu::OnMmioRead, window.get(), &EmuVcpu::OnMmioWrite,
                               window.get());
      err != UC_ERR_OK) {
    return UcError(err, absl::StrFormat("uc_mmio_map(%#x..%#x)", start, end - 1));
  }
  mmio_windows_.push_back(std::move(window));
  return absl::OkStatus();
}

absl::Status EmuVcpu::InstallHooks() {
  struct HookSpec {
    int type;
    void* callback;
    int instruction;  // UC_HOOK_INSN only
    const char* name;
  };
  const HookSpec hooks[] = {
      {UC_HOOK_INSN, reinterpret_cast<void*>(&EmuVcpu::OnIn), UC_X86_INS_IN, "IN"},
      {UC_HOOK_INSN, reinterpret_cast<void*>(&EmuVcpu::OnOut), UC_X86_INS_OUT, "OUT"},
      // #UD reaches this hook before the interrupt hook; catching it lets the interrupt hook see it.
      {UC_HOOK_INSN_INVALID, reinterpret_cast<void*>(+[](uc_engine*, void*) { return true; }), 0, "INSN_INVALID"},
      {UC_HOOK_INTR, reinterpret_cast<void*>(&EmuVcpu::OnInterrupt), 0, "INTR"},
      {UC_HOOK_MEM_UNMAPPED, reinterpret_cast<void*>(&EmuVcpu::OnUnmapped), 0, "MEM_UNMAPPED"},
  };
  for (const HookSpec& spec : hooks) {
    uc_hook hook;
    uc_err err = spec.type == UC_HOOK_INSN
                     ? uc_hook_add(uc_, &hook, spec.type, spec.callback, this, 1, 0, spec.instruction)
                     : uc_hook_add(uc_, &hook, spec.type, spec.callback, this, 1, 0);
    if (err != UC_ERR_OK) return UcError(err, absl::StrCat("uc_hook_add(", spec.name, ")"));
  }
  return InstallBlockHook();
}

// ---- The emulation: the run loop, in a coroutine that Run() enters

void EmuVcpu::Fatal(std::string reason) {
  if (!fatal_error_) fatal_error_ = std::move(reason);
}

bool EmuVcpu::ReadyToRunLocked() const {
  if (exiting_ || kick_ || fatal_error_ || shutdown_reason_) return true;
  if (init_pending_) return true;
  if (!started_) return start_request_.has_value();
  return !halted_ || InterruptReadyLocked();
}

bool EmuVcpu::PollWhileHalted() {
  if (halt_poll_.window() == std::chrono::nanoseconds::zero()) return false;
  // Not base::SpinFor: each look takes the lock the interrupt's sender needs, so looks are 16
  // PAUSEs apart (one apart, the guest disk benchmark's reads at depth 1 fell from ~90 k/s to
  // 20-40 k/s).
  const auto end = std::chrono::steady_clock::now() + halt_poll_.window();
  for (uint32_t looks = 1;; ++looks) {
    // TryLock: a thread delivering the interrupt is never held up by the poller.
    if (mutex_.TryLock()) {
      const bool ready = ReadyToRunLocked();
      mutex_.Unlock();
      if (ready) return true;
    }
    for (int i = 0; i < 16; ++i) __builtin_ia32_pause();
    if (looks % 16 == 0 && std::chrono::steady_clock::now() >= end) return false;
  }
}

void EmuVcpu::EmulationLoop() {
  while (true) {
    // Wait, if the vCPU is not started or is halted with interrupts enabled, for what ends it.
    std::optional<StartRequest> start;
    const bool halted = halted_;
    // The clock only for a halt: this loop turns once per exit, millions of times a second.
    const auto halt_began = halted ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    if (halted) (void)PollWhileHalted();
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](EmuVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) { return self->ReadyToRunLocked(); }, this));
      if (exiting_) return;
      if (init_pending_) {
        CarryOutInitLocked();
        halted_ = false;
        pending_event_.reset();
        pending_fast_call_.reset();
        continue;
      }
      start = std::exchange(start_request_, std::nullopt);
    }
    if (halted) halt_poll_.Update(std::chrono::steady_clock::now() - halt_began);
    if (start) {
      if (absl::Status booted = StartFrom(*start); !booted.ok()) {
        Fatal(absl::StrCat("emu vCPU ", id_, ": start failed: ", booted.message()));
      }
      absl::MutexLock lock(&mutex_);
      started_ = true;
    }
    if (fatal_error_) {  // the vCPU stays dead: every Run() reports it again
      Deliver(GuestErrorExit{*fatal_error_}, false);
      continue;
    }
    if (shutdown_reason_) {
      Deliver(ShutdownExit{*shutdown_reason_}, false);
      continue;
    }
    if (TakeKick()) {
      Deliver(KickedExit{}, false);
      continue;
    }
    if (!started_) continue;
    halted_ = false;
    if (DeliverPendingWork()) continue;
    bool interrupt_waiting = false;  // pending while IF = 0: stop when the guest sets IF
    const bool interrupts_enabled = (ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;
    if (std::optional<PendingEvent> interrupt = TakeInterrupt(interrupts_enabled, interrupt_waiting)) {
      DeliverEvent(*interrupt);
      continue;
    }
    RunGuest(interrupt_waiting);
  }
}

// What the last run left to do before the guest runs again: an exception or INT n its hooks
// reported, or a SYSCALL/SYSENTER to carry out.
bool EmuVcpu::DeliverPendingWork() {
  if (pending_event_) {
    PendingEvent event = *std::exchange(pending_event_, std::nullopt);
    DeliverEvent(event);
    return true;
  }
  if (pending_fast_call_) {
    CarryOutFastSystemCall(*std::exchange(pending_fast_call_, std::nullopt));
    return true;
  }
  return false;
}

void EmuVcpu::RunGuest(bool interrupt_waiting) {
  stop_requested_ = false;
  // A second vCPU was created since this engine's hook went in: the hook goes on every block.
  if (absl::Status hooked = InstallBlockHook(); !hooked.ok()) {
    Fatal(absl::StrFormat("emu vCPU %u: %s", id_, hooked.message()));
    return;
  }
  const uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  // No instruction count (it installs a per-instruction hook for the engine's life), no timeout
  // (a timer thread for every start; stops come from RequestStop and its watchdog).
  // Every start begins with no exception in flight, as after a delivery on a real CPU (the record
  // also goes stale without any exception the hooks saw; about 1 us per start).
  if (absl::Status cleared = exception_record_->Clear(uc_); !cleared.ok()) {
    Fatal(std::string(cleared.message()));
    return;
  }
  // At most one flush a millisecond: Linux serializes after each of its ~50,000 boot-time patches.
  // A deferred flush still comes before the patched code matters (the patches keep behaviour
  // until freed init code is reached, seconds later), at the first start a millisecond on.
  const bool flush_due =
      flush_translations_ && std::chrono::steady_clock::now() - last_flush_ >= std::chrono::milliseconds(1);
  if (stale_code_at_ || flush_due) {
    uc_ctl_flush_tb(uc_);
    flush_translations_ = false;
    stale_code_at_.reset();
    last_flush_ = std::chrono::steady_clock::now();
  }
  RestoreCr2();
  if (absl::Status synced = SyncExtraPages(); !synced.ok()) {
    Fatal(absl::StrFormat("emu vCPU %u: %s", id_, synced.message()));
    return;
  }
  TakeRunToken();
  uc_err err = UC_ERR_OK;
  halt_executed_ = false;
  if (BeginGuestRun(interrupt_waiting)) {
    {
      ScopedInstructionHandler intercepts(this);
      err = uc_emu_start(uc_, rip, kNeverReached, 0, 0);
    }
    EndGuestRun();
  }
  holds_run_token_ = false;
  vm_.run_token.Release();
  if (stale_code_at_) {
    WriteRegister(UC_X86_REG_RIP, *stale_code_at_);  // flushed before the next run, which starts there
    return;
  }
  if (Exiting() || fatal_error_ || pending_event_ || pending_fast_call_) return;
  if (err != UC_ERR_OK) {
    std::string where = absl::StrFormat("RIP %#x", ReadRegister(UC_X86_REG_RIP));
    if (unmapped_access_) {
      absl::StrAppendFormat(&where, ", guest-physical address %#x, which is neither RAM nor MMIO",
                            *std::exchange(unmapped_access_, std::nullopt));
    }
    Fatal(absl::StrFormat("emu vCPU %u: %s at %s", id_, uc_strerror(err), where));
    return;
  }
  if (std::exchange(stop_requested_, false)) {
    RepairBlockStop();
    return;
  }
  // Unless the guest executed HLT (BeforeHalt), the run was stopped on purpose, from another thread
  // (RequestStop) or by the watchdog's look at IF, or it did not start: the loop looks at why.
  if (!halt_executed_) return;
  if ((ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0) {
    halted_ = true;  // wait for an interrupt inside Run(), as an in-kernel LAPIC does
  } else {
    Deliver(HaltExit{}, false);
  }
}

// A stop asked for in the block hook takes effect before the block runs, but when the block was
// entered by a chained jump the engine's RIP was never updated: it still names an earlier
// block, and resuming there would run instructions twice (pushes, above all). The hook knows the
// block's address; put RIP there.
void EmuVcpu::RepairBlockStop() {
  std::optional<BlockStop> stop = std::exchange(block_stop_, std::nullopt);
  if (!stop || ReadRegister(UC_X86_REG_RIP) == stop->rip) return;
  // The stack pointer as the hook saw it says the block did not run (never seen otherwise).
  if (ReadRegister(UC_X86_REG_RSP) != stop->rsp) return;
  WriteRegister(UC_X86_REG_RIP, stop->rip);
}

bool EmuVcpu::Exiting() {
  absl::MutexLock lock(&mutex_);
  return exiting_;
}

bool EmuVcpu::TakeKick() {
  absl::MutexLock lock(&mutex_);
  return std::exchange(kick_, false);
}

void EmuVcpu::TakeRunToken() {
  vm_.run_token.Acquire();
  holds_run_token_ = true;
  slice_start_ = std::chrono::steady_clock::now();
}

uint64_t EmuVcpu::Deliver(Exit exit, bool wants_value) {
  // The other vCPUs run while the VMM handles this exit (a hypercall may wait for one of them).
  const bool held = std::exchange(holds_run_token_, false);
  if (held) vm_.run_token.Release();
  const uint64_t value = HandOff(std::move(exit), wants_value);
  if (held) TakeRunToken();
  return value;
}

uint64_t EmuVcpu::HandOff(Exit exit, bool wants_value) {
  // exit_requested_ is the destructor's (set with exiting_): the vCPU is going, no caller takes
  // exits any more.
  if (!exit_requested_.load()) {
    exit_ = std::move(exit);
    awaiting_value_ = wants_value;
    value_.reset();
    // The next Run() may come from another thread: the instruction handler goes with the
    // emulation, not with the thread it leaves.
    InstructionHandler* const handler = ExchangeInstructionHandler(nullptr);
    emulation_.Yield();  // to Run()'s caller, until it calls Run() again
    ExchangeInstructionHandler(handler);
  }
  const uint64_t value = value_.value_or(0);
  awaiting_value_ = false;
  value_.reset();
  if (exit_requested_.load()) RequestStop();
  return value;
}

// ---- Registers and guest-linear memory

// Unicorn 2.1.1 translates end - 1 after each run (see kNeverReached), and a failed translation
// writes CR2; a guest whose #PF handler is interrupted by an exit before it reads CR2 would then
// read that. The vCPU keeps the architectural value (the last #PF's address) and puts it back
// before each start. A CR2 write of the register falls through into CR3's: CR3 is put back after.
void EmuVcpu::RestoreCr2() {
  if (ReadRegister(UC_X86_REG_CR2) == cr2_) return;
  const uint64_t cr3 = ReadRegister(UC_X86_REG_CR3);
  WriteRegister(UC_X86_REG_CR2, cr2_);
  WriteRegister(UC_X86_REG_CR3, cr3);
}

uint64_t EmuVcpu::ReadRegister(int reg) {
  uint64_t value = 0;
  uc_reg_read(uc_, reg, &value);
  return value;
}

void EmuVcpu::WriteRegister(int reg, uint64_t value) { uc_reg_write(uc_, reg, &value); }

uint64_t EmuVcpu::ReadMsr(uint32_t index) {
  uc_x86_msr msr{index, 0};
  uc_reg_read(uc_, UC_X86_REG_MSR, &msr);
  return msr.value;
}

void EmuVcpu::WriteMsr(uint32_t index, uint64_t value) {
  uc_x86_msr msr{index, value};
  uc_reg_write(uc_, UC_X86_REG_MSR, &msr);
}

// EFER.LMA. (A 32-bit compatibility-mode caller is treated as 64-bit: only user space runs there,
// and hypercalls from user space are refused by CPL anyway.)
bool EmuVcpu::LongMode() { return (ReadMsr(kMsrEfer) & (1 << 10)) != 0; }
uint8_t EmuVcpu::Cpl() { return static_cast<uint8_t>(ReadRegister(UC_X86_REG_CS) & 3); }

HypercallExit EmuVcpu::HypercallFromRegisters(uint64_t number) {
  HypercallExit call;
  call.number = number;
  call.long_mode = LongMode();
  call.cpl = Cpl();
  if (call.long_mode) {
    const int regs[6] = {UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX, UC_X86_REG_R10, UC_X86_REG_R8, UC_X86_REG_R9};
    for (int i = 0; i < 6; ++i) call.args[i] = ReadRegister(regs[i]);
  } else {
    const int regs[6] = {UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX, UC_X86_REG_ESI, UC_X86_REG_EDI, UC_X86_REG_EBP};
    for (int i = 0; i < 6; ++i) call.args[i] = ReadRegister(regs[i]) & 0xffffffff;
  }
  return call;
}

// Writes the result the way the instruction's operand size does: EAX writes clear RAX's top half
// in 64-bit mode; a 32-bit guest sees only EAX.
void EmuVcpu::WriteHypercallResult(uint64_t result, bool long_mode) {
  WriteRegister(UC_X86_REG_RAX, long_mode ? result : (result & 0xffffffff));
}

PagingState EmuVcpu::Paging() {
  return PagingState{ReadRegister(UC_X86_REG_CR0), ReadRegister(UC_X86_REG_CR3), ReadRegister(UC_X86_REG_CR4),
                     ReadMsr(kMsrEfer)};
}

template <typename Access>
absl::Status EmuVcpu::ForEachPage(uint64_t linear, size_t length, Access access) {
  PagingState paging = Paging();
  size_t done = 0;
  while (done < length) {
    uint64_t address = linear + done;
    size_t chunk = std::min<size_t>(length - done, 0x1000 - (address & 0xfff));
    XENKVM_ASSIGN_OR_RETURN(uint64_t physical, accel::TranslateLinear(memory_, paging, address));
    XENKVM_RETURN_IF_ERROR(access(memory::GuestAddress(physical), done, chunk));
    done += chunk;
  }
  return absl::OkStatus();
}

absl::Status EmuVcpu::ReadLinear(uint64_t linear, std::span<uint8_t> bytes) {
  return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
    return memory_.Read(physical, bytes.subspan(at, n));
  });
}

absl::Status EmuVcpu::WriteLinear(uint64_t linear, std::span<const uint8_t> bytes) {
  return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
    return memory_.Write(physical, bytes.subspan(at, n));
  });
}

absl::Status EmuVcpu::FetchCode(uint64_t rip, std::span<uint8_t> bytes) {
  return ReadLinear(rip, bytes);  // PVH and Linux guests run with flat code segments (base 0)
}

}  // namespace xenkvm::accel::emu
