#include "components/accel/emu/emu_accelerator.h"

#include <unicorn/unicorn.h>

#include <atomic>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/emu/page_walk.h"
#include "components/base/status.h"

namespace xenkvm::accel {
namespace {

// Private memory for the boot trampoline: below 4 GiB (the trampoline ends in 32-bit code), in the
// MMIO hole where no guest RAM lives, and unmapped again before the guest's first instruction.
constexpr uint64_t kTrampolineBase = 0xffff8000;
constexpr uint64_t kTrampolineSize = 0x8000;
constexpr uint64_t kTrampolinePml4 = kTrampolineBase;
constexpr uint64_t kTrampolinePdpt = kTrampolineBase + 0x1000;
constexpr uint64_t kTrampolinePd = kTrampolineBase + 0x2000;
constexpr uint64_t kTrampolineGdt = kTrampolineBase + 0x3000;
constexpr uint64_t kTrampolineGdtr = kTrampolineBase + 0x3100;
constexpr uint64_t kTrampolineCode64 = kTrampolineBase + 0x4000;
constexpr uint64_t kTrampolineCode32 = kTrampolineBase + 0x4100;
constexpr uint64_t kFourGiB = uint64_t{1} << 32;
constexpr uint64_t kNeverReached = ~uint64_t{0};
constexpr uint32_t kMsrEfer = 0xc0000080;

absl::Status UcError(uc_err err, absl::string_view call) {
  return absl::InternalError(absl::StrCat("unicorn ", call, ": ", uc_strerror(err)));
}

void Append(std::vector<uint8_t>& code, std::initializer_list<uint8_t> bytes) {
  code.insert(code.end(), bytes);
}
void Append32(std::vector<uint8_t>& code, uint32_t value) {
  for (int i = 0; i < 4; ++i) code.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void Append64(std::vector<uint8_t>& code, uint64_t value) {
  for (int i = 0; i < 8; ++i) code.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

class EmuVcpu;

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

// One MMIO window (a hole between RAM regions below 4 GiB) as Unicorn sees it.
struct MmioWindow {
  EmuVcpu* vcpu;
  uint64_t base;
};

class EmuVcpu final : public Vcpu {
 public:
  static absl::StatusOr<std::unique_ptr<EmuVcpu>> Create(uint32_t id,
                                                         const memory::GuestMemory& memory,
                                                         const PvhEntry& boot) {
    auto vcpu = std::unique_ptr<EmuVcpu>(new EmuVcpu(id, memory));
    XENKVM_RETURN_IF_ERROR(vcpu->Open());
    XENKVM_RETURN_IF_ERROR(vcpu->Boot(boot));
    XENKVM_RETURN_IF_ERROR(vcpu->MapMmioWindows());
    XENKVM_RETURN_IF_ERROR(vcpu->InstallHooks());
    vcpu->thread_ = std::thread([raw = vcpu.get()] { raw->EmulationLoop(); });
    return vcpu;
  }

  ~EmuVcpu() override {
    {
      absl::MutexLock lock(&mutex_);
      exiting_ = true;
    }
    uc_emu_stop(uc_);
    if (thread_.joinable()) thread_.join();
    if (uc_ != nullptr) uc_close(uc_);
  }

  uint32_t id() const override { return id_; }

  absl::StatusOr<Exit> Run() override {
    absl::MutexLock lock(&mutex_);
    if (awaiting_value_ && !value_.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "emu vCPU ", id_, ": the last exit asks for a value; answer it with Complete() first"));
    }
    caller_turn_ = false;
    mutex_.Await(absl::Condition(
        +[](EmuVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) { return self->caller_turn_; },
        this));
    Exit exit = std::move(*exit_);
    exit_.reset();
    return exit;
  }

  absl::Status Complete(uint64_t value) override {
    absl::MutexLock lock(&mutex_);
    if (!awaiting_value_) {
      return absl::FailedPreconditionError(
          absl::StrCat("emu vCPU ", id_, ": Complete() but the last exit asked for no value"));
    }
    value_ = value;
    return absl::OkStatus();
  }

  absl::StatusOr<Registers> GetRegisters() override {
    Registers registers;
    for (const auto& [reg, field] : kRegisterFields) registers.*field = ReadRegister(reg);
    return registers;
  }

  absl::Status SetRegisters(const Registers& registers) override {
    for (const auto& [reg, field] : kRegisterFields) {
      uint64_t value = registers.*field;
      if (uc_err err = uc_reg_write(uc_, reg, &value); err != UC_ERR_OK) return UcError(err, "uc_reg_write");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ControlRegisters> GetControlRegisters() override {
    ControlRegisters c;
    c.cr0 = ReadRegister(UC_X86_REG_CR0);
    c.cr2 = ReadRegister(UC_X86_REG_CR2);
    c.cr3 = ReadRegister(UC_X86_REG_CR3);
    c.cr4 = ReadRegister(UC_X86_REG_CR4);
    c.efer = ReadMsr(kMsrEfer);
    c.cs_selector = static_cast<uint16_t>(ReadRegister(UC_X86_REG_CS));
    c.cpl = Cpl();
    c.long_mode = LongMode();
    return c;
  }

  absl::Status SetCpuid(std::vector<CpuidLeaf> leaves) override {
    for (const CpuidLeaf& leaf : leaves) {
      if ((leaf.function & 0xffff0000) == kEmuHypercallCpuidMagic) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "CPUID leaf %#x is reserved for emu hypercalls (%#x..%#x)", leaf.function,
            kEmuHypercallCpuidMagic, kEmuHypercallCpuidMagic | 0xffff));
      }
    }
    absl::MutexLock lock(&cpuid_mutex_);
    cpuid_ = std::move(leaves);
    return absl::OkStatus();
  }

  absl::Status InjectInterrupt(uint8_t vector) override {
    return absl::UnimplementedError(
        "emu accelerator: interrupt injection is not implemented yet (components/accel/README.md)");
  }

  void Kick() override {
    kick_.store(true);
    uc_emu_stop(uc_);
  }

 private:
  EmuVcpu(uint32_t id, const memory::GuestMemory& memory) : id_(id), memory_(memory) {}

  absl::Status Open() {
    if (uc_err err = uc_open(UC_ARCH_X86, UC_MODE_64, &uc_); err != UC_ERR_OK) {
      uc_ = nullptr;
      return UcError(err, "uc_open(UC_ARCH_X86, UC_MODE_64)");
    }
    for (const memory::GuestRegion& region : memory_.regions()) {
      if (uc_err err = uc_mem_map_ptr(uc_, region.start().value(), region.size(), UC_PROT_ALL,
                                      region.host_address());
          err != UC_ERR_OK) {
        return UcError(err, absl::StrFormat("uc_mem_map_ptr(guest RAM at %#x)", region.start().value()));
      }
    }
    return absl::OkStatus();
  }

  // Unicorn starts in long mode without paging. A small trampoline turns paging on (real long mode),
  // far-returns to 32-bit code, leaves long mode and clears EFER, loads flat segments, sets EBX and
  // jumps to the PVH entry: the state the PVH boot protocol defines.
  absl::Status Boot(const PvhEntry& boot) {
    for (const memory::GuestRegion& region : memory_.regions()) {
      if (region.start().value() < kTrampolineBase + kTrampolineSize &&
          region.last().value() >= kTrampolineBase) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "emu accelerator: guest RAM at %#x overlaps the boot trampoline's window %#x..%#x",
            region.start().value(), kTrampolineBase, kTrampolineBase + kTrampolineSize - 1));
      }
    }
    if (uc_err err = uc_mem_map(uc_, kTrampolineBase, kTrampolineSize, UC_PROT_ALL); err != UC_ERR_OK) {
      return UcError(err, "uc_mem_map(boot trampoline)");
    }
    std::vector<uint8_t> tables(0x3000, 0);
    auto put64 = [&tables](uint64_t offset, uint64_t value) {
      for (int i = 0; i < 8; ++i) tables[offset + i] = static_cast<uint8_t>(value >> (8 * i));
    };
    put64(0, kTrampolinePdpt | 3);
    put64(0x1000 + 3 * 8, kTrampolinePd | 3);  // 3..4 GiB
    for (uint64_t i = 0; i < 512; ++i) put64(0x2000 + i * 8, (0xc0000000 + (i << 21)) | 0x83);
    std::vector<uint8_t> gdt;
    Append64(gdt, 0);
    Append64(gdt, 0x00cf9b000000ffffull);  // 0x08: flat 32-bit code
    Append64(gdt, 0x00cf93000000ffffull);  // 0x10: flat data
    Append64(gdt, 0x00af9b000000ffffull);  // 0x18: 64-bit code
    std::vector<uint8_t> gdtr;
    gdtr.push_back(4 * 8 - 1);
    gdtr.push_back(0);
    Append64(gdtr, kTrampolineGdt);

    std::vector<uint8_t> code64;
    Append(code64, {0x48, 0xb8});
    Append64(code64, kTrampolinePml4);              // mov rax, pml4
    Append(code64, {0x0f, 0x22, 0xd8});             // mov cr3, rax
    Append(code64, {0x0f, 0x20, 0xe0});             // mov rax, cr4
    Append(code64, {0x83, 0xc8, 0x20});             // or eax, PAE
    Append(code64, {0x0f, 0x22, 0xe0});             // mov cr4, rax
    Append(code64, {0x0f, 0x20, 0xc0});             // mov rax, cr0
    Append(code64, {0x0f, 0xba, 0xe8, 0x1f});       // bts eax, 31 (PG)
    Append(code64, {0x0f, 0x22, 0xc0});             // mov cr0, rax: real long mode
    Append(code64, {0x48, 0xb8});
    Append64(code64, kTrampolineGdtr);              // mov rax, gdtr
    Append(code64, {0x0f, 0x01, 0x10});             // lgdt [rax]
    Append(code64, {0x6a, 0x08});                   // push 0x08
    Append(code64, {0x48, 0xb8});
    Append64(code64, kTrampolineCode32);            // mov rax, code32
    Append(code64, {0x50});                         // push rax
    Append(code64, {0x48, 0xcb});                   // retfq: to 32-bit code
    std::vector<uint8_t> code32;
    Append(code32, {0x0f, 0x20, 0xc0});             // mov eax, cr0
    Append(code32, {0x0f, 0xba, 0xf0, 0x1f});       // btr eax, 31
    Append(code32, {0x0f, 0x22, 0xc0});             // mov cr0, eax: leave long mode
    Append(code32, {0xb9});
    Append32(code32, kMsrEfer);                     // mov ecx, EFER
    Append(code32, {0x31, 0xc0, 0x31, 0xd2});       // xor eax, eax; xor edx, edx
    Append(code32, {0x0f, 0x30});                   // wrmsr: EFER = 0
    Append(code32, {0x0f, 0x22, 0xe0});             // mov cr4, eax
    Append(code32, {0x0f, 0x22, 0xd8});             // mov cr3, eax
    Append(code32, {0x66, 0xb8, 0x10, 0x00});       // mov ax, 0x10
    Append(code32, {0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x8e, 0xe0, 0x8e, 0xe8});  // ds es ss fs gs
    Append(code32, {0xbb});
    Append32(code32, boot.start_info);              // mov ebx, start_info
    Append(code32, {0x31, 0xc0, 0x31, 0xc9, 0x31, 0xd2});  // xor eax, ecx, edx
    Append(code32, {0x31, 0xf6, 0x31, 0xff, 0x31, 0xed, 0x31, 0xe4});  // xor esi, edi, ebp, esp
    Append(code32, {0xb8});
    Append32(code32, boot.entry);                   // mov eax, entry
    Append(code32, {0xff, 0xe0});                   // jmp eax

    struct Piece {
      uint64_t address;
      const std::vector<uint8_t>* bytes;
    };
    for (const Piece& piece : {Piece{kTrampolineBase, &tables}, Piece{kTrampolineGdt, &gdt},
                               Piece{kTrampolineGdtr, &gdtr}, Piece{kTrampolineCode64, &code64},
                               Piece{kTrampolineCode32, &code32}}) {
      if (uc_err err = uc_mem_write(uc_, piece.address, piece.bytes->data(), piece.bytes->size());
          err != UC_ERR_OK) {
        return UcError(err, "uc_mem_write(boot trampoline)");
      }
    }
    uint64_t stack = kTrampolineBase + kTrampolineSize - 16;
    uc_reg_write(uc_, UC_X86_REG_RSP, &stack);
    // No instruction count: a count installs a per-instruction hook that stays for the engine's life.
    if (uc_err err = uc_emu_start(uc_, kTrampolineCode64, boot.entry, 0, 0); err != UC_ERR_OK) {
      return UcError(err, "uc_emu_start(boot trampoline)");
    }
    if (uint64_t rip = ReadRegister(UC_X86_REG_RIP); rip != boot.entry) {
      return absl::InternalError(absl::StrFormat(
          "emu accelerator: boot trampoline stopped at %#x instead of the entry %#x", rip, boot.entry));
    }
    uint64_t rax = 0;
    uc_reg_write(uc_, UC_X86_REG_RAX, &rax);
    uint64_t rflags = 0x2;
    uc_reg_write(uc_, UC_X86_REG_RFLAGS, &rflags);
    if (uc_err err = uc_mem_unmap(uc_, kTrampolineBase, kTrampolineSize); err != UC_ERR_OK) {
      return UcError(err, "uc_mem_unmap(boot trampoline)");
    }
    return absl::OkStatus();
  }

  // Every page below 4 GiB that is not RAM is MMIO: a load or store there becomes an MmioExit.
  absl::Status MapMmioWindows() {
    uint64_t cursor = 0;
    auto map = [this](uint64_t start, uint64_t end) -> absl::Status {
      if (start >= end) return absl::OkStatus();
      auto window = std::make_unique<MmioWindow>(MmioWindow{this, start});
      if (uc_err err = uc_mmio_map(uc_, start, end - start, &EmuVcpu::OnMmioRead, window.get(),
                                   &EmuVcpu::OnMmioWrite, window.get());
          err != UC_ERR_OK) {
        return UcError(err, absl::StrFormat("uc_mmio_map(%#x..%#x)", start, end - 1));
      }
      mmio_windows_.push_back(std::move(window));
      return absl::OkStatus();
    };
    for (const memory::GuestRegion& region : memory_.regions()) {
      if (region.start().value() >= kFourGiB) break;
      XENKVM_RETURN_IF_ERROR(map(cursor, region.start().value()));
      cursor = region.last().value() + 1;
    }
    return map(cursor, kFourGiB);
  }

  absl::Status InstallHooks() {
    uc_hook hook;
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&EmuVcpu::OnIn),
                                 this, 1, 0, UC_X86_INS_IN);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(IN)");
    }
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&EmuVcpu::OnOut),
                                 this, 1, 0, UC_X86_INS_OUT);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(OUT)");
    }
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_INSN, reinterpret_cast<void*>(&EmuVcpu::OnCpuid),
                                 this, 1, 0, UC_X86_INS_CPUID);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(CPUID)");
    }
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_INSN_INVALID,
                                 reinterpret_cast<void*>(&EmuVcpu::OnInvalidInstruction), this, 1, 0);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(INSN_INVALID)");
    }
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_INTR,
                                 reinterpret_cast<void*>(&EmuVcpu::OnInterrupt), this, 1, 0);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(INTR)");
    }
    return absl::OkStatus();
  }

  // ---- The emulation thread

  bool Exiting() {
    absl::MutexLock lock(&mutex_);
    return exiting_;
  }

  void EmulationLoop() {
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](EmuVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) {
            return !self->caller_turn_ || self->exiting_;
          },
          this));
    }
    while (!Exiting()) {
      if (fatal_error_) {
        Deliver(GuestErrorExit{*fatal_error_}, false);
        continue;
      }
      if (kick_.exchange(false)) {
        Deliver(KickedExit{}, false);
        continue;
      }
      hook_resumes_ = false;
      uint64_t rip = ReadRegister(UC_X86_REG_RIP);
      uc_err err = uc_emu_start(uc_, rip, kNeverReached, 0, 0);
      if (Exiting()) return;
      if (fatal_error_) continue;
      if (err != UC_ERR_OK) {
        fatal_error_ = absl::StrFormat("emu vCPU %u: %s at RIP %#x", id_, uc_strerror(err),
                                       ReadRegister(UC_X86_REG_RIP));
        continue;
      }
      if (hook_resumes_ || kick_.load()) continue;
      // Nothing else ends an unbounded uc_emu_start without an error: the guest executed HLT.
      Deliver(HaltExit{}, false);
    }
  }

  // Hands `exit` to the caller's Run() and waits for the next Run(); returns the Complete() value.
  uint64_t Deliver(Exit exit, bool wants_value) {
    absl::MutexLock lock(&mutex_);
    exit_ = std::move(exit);
    awaiting_value_ = wants_value;
    value_.reset();
    caller_turn_ = true;
    mutex_.Await(absl::Condition(
        +[](EmuVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) {
          return !self->caller_turn_ || self->exiting_;
        },
        this));
    uint64_t value = value_.value_or(0);
    awaiting_value_ = false;
    value_.reset();
    if (exiting_) uc_emu_stop(uc_);
    return value;
  }

  uint64_t ReadRegister(int reg) {
    uint64_t value = 0;
    uc_reg_read(uc_, reg, &value);
    return value;
  }
  void WriteRegister(int reg, uint64_t value) { uc_reg_write(uc_, reg, &value); }
  uint64_t ReadMsr(uint32_t index) {
    uc_x86_msr msr{index, 0};
    uc_reg_read(uc_, UC_X86_REG_MSR, &msr);
    return msr.value;
  }
  // EFER.LMA. (A 32-bit compatibility-mode caller is treated as 64-bit: only user space runs there,
  // and hypercalls from user space are refused by CPL anyway.)
  bool LongMode() { return (ReadMsr(kMsrEfer) & (1 << 10)) != 0; }
  uint8_t Cpl() { return static_cast<uint8_t>(ReadRegister(UC_X86_REG_CS) & 3); }

  HypercallExit HypercallFromRegisters(uint64_t number) {
    HypercallExit call;
    call.number = number;
    call.long_mode = LongMode();
    call.cpl = Cpl();
    if (call.long_mode) {
      const int regs[6] = {UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RDX,
                           UC_X86_REG_R10, UC_X86_REG_R8,  UC_X86_REG_R9};
      for (int i = 0; i < 6; ++i) call.args[i] = ReadRegister(regs[i]);
    } else {
      const int regs[6] = {UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX,
                           UC_X86_REG_ESI, UC_X86_REG_EDI, UC_X86_REG_EBP};
      for (int i = 0; i < 6; ++i) call.args[i] = ReadRegister(regs[i]) & 0xffffffff;
    }
    return call;
  }

  // Writes the result the way the instruction's operand size does: EAX writes clear RAX's top half
  // in 64-bit mode; a 32-bit guest sees only EAX.
  void WriteHypercallResult(uint64_t result, bool long_mode) {
    WriteRegister(UC_X86_REG_RAX, long_mode ? result : (result & 0xffffffff));
  }

  // ---- Hooks (on the emulation thread)

  static uint32_t OnIn(uc_engine*, uint32_t port, int size, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    uint64_t value = self->Deliver(
        PortIoExit{false, static_cast<uint16_t>(port), static_cast<uint8_t>(size), 0}, true);
    return static_cast<uint32_t>(size == 4 ? value : value & ((1u << (8 * size)) - 1));
  }

  static void OnOut(uc_engine*, uint32_t port, int size, uint32_t value, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    self->Deliver(PortIoExit{true, static_cast<uint16_t>(port), static_cast<uint8_t>(size), value}, false);
  }

  static int OnCpuid(uc_engine*, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    uint32_t function = static_cast<uint32_t>(self->ReadRegister(UC_X86_REG_EAX));
    if ((function & 0xffff0000) == kEmuHypercallCpuidMagic) {
      HypercallExit call = self->HypercallFromRegisters(function & 0xffff);
      bool long_mode = call.long_mode;
      uint64_t result = self->Deliver(call, true);
      self->WriteHypercallResult(result, long_mode);
      return 1;
    }
    uint32_t index = static_cast<uint32_t>(self->ReadRegister(UC_X86_REG_ECX));
    absl::MutexLock lock(&self->cpuid_mutex_);
    for (const CpuidLeaf& leaf : self->cpuid_) {
      if (leaf.function == function && (!leaf.index || *leaf.index == index)) {
        self->WriteRegister(UC_X86_REG_RAX, leaf.eax);
        self->WriteRegister(UC_X86_REG_RBX, leaf.ebx);
        self->WriteRegister(UC_X86_REG_RCX, leaf.ecx);
        self->WriteRegister(UC_X86_REG_RDX, leaf.edx);
        return 1;
      }
    }
    return 0;  // the CPU model answers
  }

  // VMCALL and VMMCALL are invalid to Unicorn; they are Xen hypercalls (RAX = number).
  static bool OnInvalidInstruction(uc_engine*, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    uint64_t rip = self->ReadRegister(UC_X86_REG_RIP);
    std::array<uint8_t, 3> bytes{};
    absl::Status fetched = self->FetchCode(rip, bytes);
    bool is_vmcall = fetched.ok() && bytes[0] == 0x0f && bytes[1] == 0x01 &&
                     (bytes[2] == 0xc1 || bytes[2] == 0xd9);
    if (!is_vmcall) {
      self->fatal_error_ = absl::StrFormat(
          "emu vCPU %u: invalid instruction at RIP %#x (%02x %02x %02x): #UD delivery to the guest "
          "is not supported by the emu accelerator yet",
          self->id_, rip, bytes[0], bytes[1], bytes[2]);
      return false;
    }
    HypercallExit call = self->HypercallFromRegisters(self->ReadRegister(UC_X86_REG_RAX));
    bool long_mode = call.long_mode;
    uint64_t result = self->Deliver(call, true);
    self->WriteHypercallResult(result, long_mode);
    self->WriteRegister(UC_X86_REG_RIP, rip + 3);
    self->hook_resumes_ = true;  // this hook always ends uc_emu_start; the loop re-enters
    return true;
  }

  static void OnInterrupt(uc_engine* uc, uint32_t vector, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    self->fatal_error_ = absl::StrFormat(
        "emu vCPU %u: guest exception or INT %u at RIP %#x is not supported by the emu accelerator",
        self->id_, vector, self->ReadRegister(UC_X86_REG_RIP));
    uc_emu_stop(uc);
  }

  static uint64_t OnMmioRead(uc_engine*, uint64_t offset, unsigned size, void* user) {
    auto* window = static_cast<MmioWindow*>(user);
    return window->vcpu->Deliver(
        MmioExit{false, window->base + offset, static_cast<uint8_t>(size), 0}, true);
  }

  static void OnMmioWrite(uc_engine*, uint64_t offset, unsigned size, uint64_t value, void* user) {
    auto* window = static_cast<MmioWindow*>(user);
    window->vcpu->Deliver(MmioExit{true, window->base + offset, static_cast<uint8_t>(size), value}, false);
  }

  absl::Status FetchCode(uint64_t rip, std::span<uint8_t> bytes) {
    emu::PagingState paging{ReadRegister(UC_X86_REG_CR0), ReadRegister(UC_X86_REG_CR3),
                            ReadRegister(UC_X86_REG_CR4), ReadMsr(kMsrEfer)};
    uint64_t linear = rip;  // PVH and Linux guests run with flat code segments (base 0)
    for (size_t i = 0; i < bytes.size(); ++i) {
      absl::StatusOr<uint64_t> physical = emu::TranslateLinear(memory_, paging, linear + i);
      if (!physical.ok()) return physical.status();
      absl::StatusOr<uint8_t> byte = memory_.ReadObject<uint8_t>(memory::GuestAddress(*physical));
      if (!byte.ok()) return byte.status();
      bytes[i] = *byte;
    }
    return absl::OkStatus();
  }

  const uint32_t id_;
  const memory::GuestMemory& memory_;
  uc_engine* uc_ = nullptr;
  std::vector<std::unique_ptr<MmioWindow>> mmio_windows_;
  std::thread thread_;

  absl::Mutex mutex_;
  bool caller_turn_ ABSL_GUARDED_BY(mutex_) = true;
  bool exiting_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<Exit> exit_ ABSL_GUARDED_BY(mutex_);
  bool awaiting_value_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<uint64_t> value_ ABSL_GUARDED_BY(mutex_);

  absl::Mutex cpuid_mutex_;
  std::vector<CpuidLeaf> cpuid_ ABSL_GUARDED_BY(cpuid_mutex_);

  std::atomic<bool> kick_{false};
  // Emulation thread only.
  bool hook_resumes_ = false;
  std::optional<std::string> fatal_error_;
};

class EmuAccelerator final : public Accelerator {
 public:
  explicit EmuAccelerator(const memory::GuestMemory& memory) : memory_(memory) {
    capabilities_.name = "emu";
  }
  const Capabilities& capabilities() const override { return capabilities_; }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(uint32_t id, std::optional<PvhEntry> boot) override {
    if (!boot) {
      return absl::UnimplementedError(
          "emu accelerator: vCPUs that start halted (secondary vCPUs) are not supported yet");
    }
    XENKVM_ASSIGN_OR_RETURN(std::unique_ptr<EmuVcpu> vcpu, EmuVcpu::Create(id, memory_, *boot));
    return std::unique_ptr<Vcpu>(std::move(vcpu));
  }

 private:
  const memory::GuestMemory& memory_;
  Capabilities capabilities_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Accelerator>> CreateEmuAccelerator(const memory::GuestMemory& memory) {
  return std::unique_ptr<Accelerator>(new EmuAccelerator(memory));
}

}  // namespace xenkvm::accel
