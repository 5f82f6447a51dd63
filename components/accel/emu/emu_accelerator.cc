#include "components/accel/emu/emu_accelerator.h"

#include <unicorn/unicorn.h>

#include <atomic>
#include <bitset>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/page_walk.h"
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
constexpr uint64_t kRflagsIf = 1 << 9;
// Flags an interrupt or exception clears on entry: TF, NT, RF, VM (and IF for interrupt gates).
constexpr uint64_t kRflagsClearedOnEntry = (1 << 8) | (1 << 14) | (1 << 16) | (1 << 17);
// The boot vCPU traces instructions for the hypercall-page WRMSR from its first instruction, for at
// most this many (Linux writes the MSR within its first few thousand); later writes are caught by
// arming the trace at CPUID leaf base+2, which the WRMSR follows closely.
constexpr uint64_t kBootTraceInstructions = 2'000'000;
constexpr uint64_t kArmedTraceInstructions = 100'000;

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


// What every vCPU of one emu VM shares.
struct EmuVmState {
  explicit EmuVmState(const memory::GuestMemory& memory) : memory(memory) {}
  const memory::GuestMemory& memory;
  std::atomic<uint32_t> hypercall_msr{0};  // 0: no hypercall page
};

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

// Exceptions that push an error code; Unicorn does not report it, so they cannot be delivered.
bool HasErrorCode(uint32_t vector) {
  return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 ||
         vector == 29 || vector == 30;
}

// The hypercall stub for `number`: mov $(magic|n), %eax; cpuid; ret, padded with int3.
std::vector<uint8_t> EmuHypercallPage() {
  std::vector<uint8_t> page(kHypercallPageSize, 0xcc);
  for (uint32_t number = 0; number < kHypercallPageSize / kHypercallStubSize; ++number) {
    std::vector<uint8_t> stub;
    Append(stub, {0xb8});
    Append32(stub, kEmuHypercallCpuidMagic | number);
    Append(stub, {0x0f, 0xa2, 0xc3});
    std::copy(stub.begin(), stub.end(), page.begin() + number * kHypercallStubSize);
  }
  return page;
}

class EmuVcpu final : public Vcpu {
 public:
  static absl::StatusOr<std::unique_ptr<EmuVcpu>> Create(uint32_t id, EmuVmState& vm,
                                                         std::optional<PvhEntry> boot) {
    auto vcpu = std::unique_ptr<EmuVcpu>(new EmuVcpu(id, vm));
    XENKVM_RETURN_IF_ERROR(vcpu->Open());
    XENKVM_RETURN_IF_ERROR(vcpu->ProbeModelLeaf1());
    XENKVM_RETURN_IF_ERROR(vcpu->MapMmioWindows());
    XENKVM_RETURN_IF_ERROR(vcpu->InstallHooks());
    if (boot) {
      if (vm.hypercall_msr.load() != 0) {
        XENKVM_RETURN_IF_ERROR(vcpu->AddTraceHook(kBootTraceInstructions));
      }
      XENKVM_RETURN_IF_ERROR(vcpu->Boot(*boot));
      vcpu->started_ = true;
    }
    vcpu->thread_ = std::thread([raw = vcpu.get()] { raw->EmulationLoop(); });
    return vcpu;
  }

  ~EmuVcpu() override {
    {
      absl::MutexLock lock(&mutex_);
      exiting_ = true;
    }
    stop_wanted_.store(true);
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

  absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) override {
    return accel::TranslateLinear(memory_, Paging(), linear);
  }

  absl::StatusOr<int64_t> TscOffset() override { return 0; }  // RDTSC is the host's

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

  absl::Status Start(const PvhEntry& boot) override {
    absl::MutexLock lock(&mutex_);
    if (started_ || start_request_) {
      return absl::FailedPreconditionError(absl::StrCat("emu vCPU ", id_, " is already started"));
    }
    start_request_ = boot;
    return absl::OkStatus();
  }

  absl::Status InjectInterrupt(uint8_t vector) override {
    XENKVM_RETURN_IF_ERROR(CheckExternalVector(vector));
    {
      absl::MutexLock lock(&mutex_);
      pending_interrupts_.set(vector);
    }
    stop_wanted_.store(true);
    return absl::OkStatus();
  }

  void Kick() override {
    {
      absl::MutexLock lock(&mutex_);
      kick_ = true;
    }
    stop_wanted_.store(true);
  }

 private:
  EmuVcpu(uint32_t id, EmuVmState& vm) : id_(id), vm_(vm), memory_(vm.memory) {}

  absl::Status Open() {
    if (uc_err err = uc_open(UC_ARCH_X86, UC_MODE_64, &uc_); err != UC_ERR_OK) {
      uc_ = nullptr;
      return UcError(err, "uc_open(UC_ARCH_X86, UC_MODE_64)");
    }
    for (const memory::GuestRegion& region : memory_.regions()) {
      if (region.start().value() < kTrampolineBase + kTrampolineSize &&
          region.last().value() >= kTrampolineBase) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "emu accelerator: guest RAM at %#x overlaps the boot trampoline's window %#x..%#x",
            region.start().value(), kTrampolineBase, kTrampolineBase + kTrampolineSize - 1));
      }
      if (uc_err err = uc_mem_map_ptr(uc_, region.start().value(), region.size(), UC_PROT_ALL,
                                      region.host_address());
          err != UC_ERR_OK) {
        return UcError(err, absl::StrFormat("uc_mem_map_ptr(guest RAM at %#x)", region.start().value()));
      }
    }
    return absl::OkStatus();
  }

  // Runs CPUID leaf 1 on the bare engine (before any hook) to learn the CPU model's answer, which
  // OnCpuid then gives with the hypervisor bit (ECX[31], as KVM shows it) and this vCPU's APIC ID.
  absl::Status ProbeModelLeaf1() {
    if (uc_err err = uc_mem_map(uc_, kTrampolineBase, kTrampolineSize, UC_PROT_ALL); err != UC_ERR_OK) {
      return UcError(err, "uc_mem_map(CPUID probe)");
    }
    const uint8_t probe[] = {0x0f, 0xa2};  // cpuid
    uc_mem_write(uc_, kTrampolineCode64, probe, sizeof(probe));
    uint64_t leaf = 1, subleaf = 0;
    uc_reg_write(uc_, UC_X86_REG_RAX, &leaf);
    uc_reg_write(uc_, UC_X86_REG_RCX, &subleaf);
    uc_err err = uc_emu_start(uc_, kTrampolineCode64, kTrampolineCode64 + sizeof(probe), 0, 0);
    model_leaf1_ = CpuidLeaf{1,
                             std::nullopt,
                             static_cast<uint32_t>(ReadRegister(UC_X86_REG_RAX)),
                             (static_cast<uint32_t>(ReadRegister(UC_X86_REG_RBX)) & 0x00ffffff) | (id_ << 24),
                             static_cast<uint32_t>(ReadRegister(UC_X86_REG_RCX)) | (1u << 31),
                             static_cast<uint32_t>(ReadRegister(UC_X86_REG_RDX))};
    uc_mem_unmap(uc_, kTrampolineBase, kTrampolineSize);
    if (err != UC_ERR_OK) return UcError(err, "uc_emu_start(CPUID probe)");
    return absl::OkStatus();
  }

  // Unicorn starts in long mode without paging. A small trampoline turns paging on (real long mode),
  // far-returns to 32-bit code, leaves long mode and clears EFER, loads flat segments, sets EBX and
  // jumps to the PVH entry: the state the PVH boot protocol defines.
  absl::Status Boot(const PvhEntry& boot) {
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
    Append(code32, {0x31, 0xf6, 0x31, 0xff, 0x31, 0xed});  // xor esi, edi, ebp
    Append(code32, {0xbc});
    Append32(code32, boot.stack_pointer);           // mov esp, stack_pointer
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
    uint64_t stack = kTrampolineBase + kTrampolineSize - 16;  // the trampoline's own
    uc_reg_write(uc_, UC_X86_REG_RSP, &stack);
    // No instruction count: a count installs a per-instruction hook that stays for the engine's life.
    // A kick may stop the trampoline between blocks (OnBlock): carry on from where it stopped.
    uint64_t from = kTrampolineCode64;
    do {
      stop_requested_ = false;
      if (uc_err err = uc_emu_start(uc_, from, boot.entry, 0, 0); err != UC_ERR_OK) {
        return UcError(err, "uc_emu_start(boot trampoline)");
      }
      from = ReadRegister(UC_X86_REG_RIP);
    } while (from != boot.entry && stop_requested_);
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

  // Every page below the trampoline's window that is not RAM is MMIO: a load or store there becomes
  // an MmioExit. (The top 32 KiB below 4 GiB, the legacy BIOS area, stay unmapped.)
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
      if (region.start().value() >= kTrampolineBase) break;
      XENKVM_RETURN_IF_ERROR(map(cursor, region.start().value()));
      cursor = region.last().value() + 1;
    }
    return map(cursor, kTrampolineBase);
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
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_BLOCK, reinterpret_cast<void*>(&EmuVcpu::OnBlock), this, 1, 0);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(BLOCK)");
    }
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_MEM_UNMAPPED,
                                 reinterpret_cast<void*>(&EmuVcpu::OnUnmapped), this, 1, 0);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(MEM_UNMAPPED)");
    }
    return absl::OkStatus();
  }

  // The hypercall-page trace: a per-instruction hook that looks for WRMSR to the hypercall MSR.
  // Only code translated after the hook exists calls it. Unicorn's TB flush is not used: the first
  // one in a process zeroes the whole translation buffer (about 2 s and a gigabyte of RSS here).
  // So the boot vCPU traces from its first instruction, and a later arming (at CPUID leaf base+2)
  // traces only code translated from then on, which a first-time WRMSR path is.
  absl::Status AddTraceHook(uint64_t instruction_budget) {
    if (trace_hook_) return absl::OkStatus();
    uc_hook hook;
    if (uc_err err = uc_hook_add(uc_, &hook, UC_HOOK_CODE,
                                 reinterpret_cast<void*>(&EmuVcpu::OnTraceInstruction), this, 1, 0);
        err != UC_ERR_OK) {
      return UcError(err, "uc_hook_add(CODE, hypercall-page trace)");
    }
    trace_hook_ = hook;
    trace_budget_ = instruction_budget;

    return absl::OkStatus();
  }

  // Blocks translated while tracing keep a call into Unicorn's (now empty) hook list: a small cost
  // on code that early boot mostly runs once.
  void RemoveTraceHook() {
    if (!trace_hook_) return;
    uc_hook_del(uc_, *trace_hook_);
    trace_hook_.reset();
  }

  // ---- The emulation thread

  void Fatal(std::string reason) {
    if (!fatal_error_) fatal_error_ = std::move(reason);
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
    while (true) {
      // Wait, if the vCPU is not started or is halted with interrupts enabled, for what ends it.
      std::optional<PvhEntry> start;
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(
            +[](EmuVcpu* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mutex_) {
              if (self->exiting_ || self->kick_ || self->fatal_error_) return true;
              if (!self->started_) return self->start_request_.has_value();
              return !self->halted_ || self->pending_interrupts_.any();
            },
            this));
        if (exiting_) return;
        start = std::exchange(start_request_, std::nullopt);
      }
      if (start) {
        if (absl::Status booted = Boot(*start); !booted.ok()) {
          Fatal(absl::StrCat("emu vCPU ", id_, ": start failed: ", booted.message()));
        }
        absl::MutexLock lock(&mutex_);
        started_ = true;
      }
      if (fatal_error_) {
        Deliver(GuestErrorExit{*fatal_error_}, false);
        continue;
      }
      if (TakeKick()) {
        Deliver(KickedExit{}, false);
        continue;
      }
      if (!started_) continue;
      halted_ = false;
      if (pending_exception_) {
        uint32_t vector = *std::exchange(pending_exception_, std::nullopt);
        if (absl::Status delivered = DeliverVector(vector, /*external=*/false); !delivered.ok()) {
          Fatal(std::string(delivered.message()));
        }
        continue;
      }
      if (trace_remove_requested_) {
        trace_remove_requested_ = false;
        RemoveTraceHook();
      }
      bool interrupts_enabled = (ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;
      std::optional<uint8_t> interrupt;
      bool interrupt_waiting = false;  // pending while IF = 0: stop when the guest sets IF
      {
        absl::MutexLock lock(&mutex_);
        if (pending_interrupts_.any()) {
          interrupt_waiting = true;
          if (interrupts_enabled) {
            for (int v = 255; v >= 0; --v) {
              if (pending_interrupts_.test(v)) {
                interrupt = static_cast<uint8_t>(v);
                pending_interrupts_.reset(v);
                break;
              }
            }
          }
        }
      }
      if (interrupt) {
        if (absl::Status delivered = DeliverVector(*interrupt, /*external=*/true); !delivered.ok()) {
          Fatal(std::string(delivered.message()));
        }
        continue;
      }
      stop_requested_ = false;
      interrupt_window_wanted_.store(interrupt_waiting);
      uint64_t rip = ReadRegister(UC_X86_REG_RIP);
      // No instruction count (it installs a per-instruction hook for the engine's life), no timeout
      // (Unicorn's timer stops the engine from another thread: see OnBlock).
      uc_err err = uc_emu_start(uc_, rip, kNeverReached, 0, 0);
      if (Exiting()) return;
      if (fatal_error_ || pending_exception_) continue;
      if (err != UC_ERR_OK) {
        std::string where = absl::StrFormat("RIP %#x", ReadRegister(UC_X86_REG_RIP));
        if (unmapped_access_) {
          absl::StrAppendFormat(&where, ", guest-physical address %#x, which is neither RAM nor MMIO",
                                *std::exchange(unmapped_access_, std::nullopt));
        }
        Fatal(absl::StrFormat("emu vCPU %u: %s at %s", id_, uc_strerror(err), where));
        continue;
      }
      if (std::exchange(stop_requested_, false)) {
        RepairBlockStop();
        continue;
      }
      // Nothing else ends an unbounded uc_emu_start without an error: the guest executed HLT.
      if ((ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0) {
        halted_ = true;  // wait for an interrupt inside Run(), as an in-kernel LAPIC does
      } else {
        Deliver(HaltExit{}, false);
      }
    }
  }

  // A stop asked for in the block hook takes effect before the block runs, but when the block was
  // entered by a chained jump the engine's RIP was never updated: it still names an earlier
  // block, and resuming there would run instructions twice (pushes, above all). The hook knows the
  // block's address; put RIP there.
  void RepairBlockStop() {
    std::optional<BlockStop> stop = std::exchange(block_stop_, std::nullopt);
    if (!stop || ReadRegister(UC_X86_REG_RIP) == stop->address) return;
    // The stack pointer as the hook saw it says the block did not run (never seen otherwise).
    if (ReadRegister(UC_X86_REG_RSP) != stop->rsp) return;
    WriteRegister(UC_X86_REG_RIP, stop->address);
  }

  bool Exiting() {
    absl::MutexLock lock(&mutex_);
    return exiting_;
  }

  bool TakeKick() {
    absl::MutexLock lock(&mutex_);
    return std::exchange(kick_, false);
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
    if (exiting_) stop_wanted_.store(true);
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

  // ---- Guest-linear access (for IDT, TSS and stack), by walking the guest's page tables.

  PagingState Paging() {
    return PagingState{ReadRegister(UC_X86_REG_CR0), ReadRegister(UC_X86_REG_CR3),
                            ReadRegister(UC_X86_REG_CR4), ReadMsr(kMsrEfer)};
  }

  template <typename Access>
  absl::Status ForEachPage(uint64_t linear, size_t length, Access access) {
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

  absl::Status ReadLinear(uint64_t linear, std::span<uint8_t> bytes) {
    return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
      return memory_.Read(physical, bytes.subspan(at, n));
    });
  }

  absl::Status WriteLinear(uint64_t linear, std::span<const uint8_t> bytes) {
    return ForEachPage(linear, bytes.size(), [&](memory::GuestAddress physical, size_t at, size_t n) {
      return memory_.Write(physical, bytes.subspan(at, n));
    });
  }

  absl::Status FetchCode(uint64_t rip, std::span<uint8_t> bytes) {
    return ReadLinear(rip, bytes);  // PVH and Linux guests run with flat code segments (base 0)
  }

  // Delivers `vector` through the guest's IDT the way the CPU would from CPL 0: an interrupt or
  // exception without an error code, in 32-bit protected mode or long mode. `external` marks an
  // injected interrupt: one that lands on a HLT (the STI; HLT idiom) returns past it.
  absl::Status DeliverVector(uint32_t vector, bool external) {
    auto refuse = [&](absl::string_view why) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "emu vCPU %u: cannot deliver vector %u at RIP %#x: %s", id_, vector,
          ReadRegister(UC_X86_REG_RIP), why));
    };
    if ((ReadRegister(UC_X86_REG_CR0) & 1) == 0) return refuse("real mode is not supported");
    if (Cpl() != 0) {
      return refuse("delivery from CPL > 0 (a privilege change) is not supported by the emu accelerator");
    }
    uint64_t rip = ReadRegister(UC_X86_REG_RIP);
    if (external) {
      std::array<uint8_t, 1> opcode{};
      if (FetchCode(rip, opcode).ok() && opcode[0] == 0xf4) rip += 1;
    }
    uc_x86_mmr idtr{};
    uc_reg_read(uc_, UC_X86_REG_IDTR, &idtr);
    const bool long_mode = LongMode();
    const uint32_t gate_size = long_mode ? 16 : 8;
    if (uint64_t{vector} * gate_size + gate_size - 1 > idtr.limit) return refuse("beyond the IDT limit");
    std::array<uint8_t, 16> gate{};
    if (absl::Status read = ReadLinear(idtr.base + vector * gate_size, std::span(gate).first(gate_size));
        !read.ok()) {
      return refuse(absl::StrCat("IDT entry unreadable: ", read.message()));
    }
    auto le = [&gate](int at, int bytes) {
      uint64_t value = 0;
      for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | gate[at + i];
      return value;
    };
    const uint8_t type = gate[5] & 0x0f;
    if ((gate[5] & 0x80) == 0) return refuse("the IDT entry is not present");
    if (type != 0x0e && type != 0x0f) return refuse("the IDT entry is not a 32/64-bit interrupt or trap gate");
    const uint16_t selector = static_cast<uint16_t>(le(2, 2));
    uint64_t target = le(0, 2) | (le(6, 2) << 16);
    const uint64_t rflags = ReadRegister(UC_X86_REG_RFLAGS);
    const uint64_t cs = ReadRegister(UC_X86_REG_CS);
    uint64_t rsp = ReadRegister(UC_X86_REG_RSP);
    if (long_mode) {
      target |= le(8, 4) << 32;
      const uint8_t ist = gate[4] & 7;
      const uint64_t old_rsp = rsp;
      if (ist != 0) {
        uc_x86_mmr tr{};
        uc_reg_read(uc_, UC_X86_REG_TR, &tr);
        std::array<uint8_t, 8> stack{};
        if (absl::Status read = ReadLinear(tr.base + 0x24 + 8 * (ist - 1), stack); !read.ok()) {
          return refuse(absl::StrCat("TSS IST entry unreadable: ", read.message()));
        }
        rsp = 0;
        for (int i = 7; i >= 0; --i) rsp = (rsp << 8) | stack[i];
      }
      rsp &= ~uint64_t{0xf};
      const uint64_t frame[5] = {rip, cs, rflags, old_rsp, ReadRegister(UC_X86_REG_SS)};
      rsp -= sizeof(frame);
      if (absl::Status written =
              WriteLinear(rsp, std::span(reinterpret_cast<const uint8_t*>(frame), sizeof(frame)));
          !written.ok()) {
        return refuse(absl::StrCat("the interrupt stack is not writable RAM: ", written.message()));
      }
    } else {
      const uint32_t frame[3] = {static_cast<uint32_t>(rip), static_cast<uint32_t>(cs),
                                 static_cast<uint32_t>(rflags)};
      rsp = (rsp - sizeof(frame)) & 0xffffffff;
      if (absl::Status written =
              WriteLinear(rsp, std::span(reinterpret_cast<const uint8_t*>(frame), sizeof(frame)));
          !written.ok()) {
        return refuse(absl::StrCat("the interrupt stack is not writable RAM: ", written.message()));
      }
    }
    uint64_t new_rflags = rflags & ~kRflagsClearedOnEntry;
    if (type == 0x0e) new_rflags &= ~kRflagsIf;
    WriteRegister(UC_X86_REG_RSP, rsp);
    WriteRegister(UC_X86_REG_RFLAGS, new_rflags);
    if ((selector & ~3) != (cs & ~3)) {
      uint64_t value = selector;
      if (uc_err err = uc_reg_write(uc_, UC_X86_REG_CS, &value); err != UC_ERR_OK) {
        return refuse(absl::StrFormat("loading CS %#x: %s", selector, uc_strerror(err)));
      }
    }
    WriteRegister(UC_X86_REG_RIP, target);
    return absl::OkStatus();
  }

  // Unicorn 2.0.1 never clears QEMU's record of the last exception (only a delivery it performs
  // itself would), so a second #DE is reported as a double fault. A "double fault" on a DIV or
  // IDIV is therefore that #DE.
  uint32_t CorrectDoubleFault(uint32_t vector) {
    if (vector != 8) return vector;
    std::array<uint8_t, 4> code{};
    if (!FetchCode(ReadRegister(UC_X86_REG_RIP), code).ok()) return vector;
    size_t at = 0;
    while (at < 2 && (code[at] == 0x66 || (code[at] & 0xf0) == 0x40)) ++at;  // operand size, REX
    if ((code[at] == 0xf6 || code[at] == 0xf7) && ((code[at + 1] >> 3) & 7) >= 6) return 0;
    return vector;
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

  static int OnCpuid(uc_engine* uc, void* user) {
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
    return 0;  // the CPU model answers
  }

  // Per instruction while the hypercall-page trace is on: WRMSR (0f 30) with ECX = the MSR fills
  // the page named by EDX:EAX (Unicorn then drops the write itself, as it does any unknown MSR).
  static void OnTraceInstruction(uc_engine* uc, uint64_t address, uint32_t size, void* user) {
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
    uint64_t value = (self->ReadRegister(UC_X86_REG_RDX) << 32) |
                     (self->ReadRegister(UC_X86_REG_RAX) & 0xffffffff);
    // Low 12 bits: the page index within the hypercall area; xenkvm has one page.
    if ((value & 0xfff) == 0) {
      static const std::vector<uint8_t> page = EmuHypercallPage();
      (void)self->memory_.Write(memory::GuestAddress(value), page);  // not RAM: ignored, as KVM does
    }
    // The page is ready before the WRMSR even executes; the trace ends at the next block.
    self->trace_remove_requested_ = true;
    self->stop_wanted_.store(true);
  }

  // VMCALL and VMMCALL are invalid to Unicorn; they are Xen hypercalls (RAX = number). Any other
  // invalid instruction is #UD for the guest.
  static bool OnInvalidInstruction(uc_engine*, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    uint64_t rip = self->ReadRegister(UC_X86_REG_RIP);
    std::array<uint8_t, 3> bytes{};
    absl::Status fetched = self->FetchCode(rip, bytes);
    bool is_vmcall = fetched.ok() && bytes[0] == 0x0f && bytes[1] == 0x01 &&
                     (bytes[2] == 0xc1 || bytes[2] == 0xd9);
    if (!is_vmcall) {
      self->pending_exception_ = 6;  // #UD, a fault: RIP stays at the instruction
      return true;
    }
    HypercallExit call = self->HypercallFromRegisters(self->ReadRegister(UC_X86_REG_RAX));
    bool long_mode = call.long_mode;
    uint64_t result = self->Deliver(call, true);
    self->WriteHypercallResult(result, long_mode);
    self->WriteRegister(UC_X86_REG_RIP, rip + 3);
    self->stop_requested_ = true;  // this hook always ends uc_emu_start; the loop re-enters
    return true;
  }

  // At the start of every translation block: the one place where stopping the engine is exact.
  // Unicorn 2.0.1 mishandles a uc_emu_stop that lands while a hook (IN, OUT, CPUID, MMIO) runs: it
  // resumes at a stale RIP, re-executing or skipping instructions. So other threads (Kick,
  // InjectInterrupt) only set stop_wanted_, and this hook stops the engine between blocks.
  static void OnBlock(uc_engine* uc, uint64_t address, uint32_t, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    bool stop = self->stop_wanted_.load(std::memory_order_relaxed) && self->stop_wanted_.exchange(false);
    if (!stop && self->interrupt_window_wanted_.load(std::memory_order_relaxed)) {
      stop = (self->ReadRegister(UC_X86_REG_RFLAGS) & kRflagsIf) != 0;  // the guest opened the window
    }
    if (stop) {
      self->stop_requested_ = true;
      self->block_stop_ = BlockStop{address, self->ReadRegister(UC_X86_REG_RSP)};
      uc_emu_stop(uc);
    }
  }

  // Exceptions and INT n. Faults arrive with RIP at the instruction, traps and INT n past it, which
  // is what the frame must hold either way.
  static void OnInterrupt(uc_engine* uc, uint32_t vector, void* user) {
    auto* self = static_cast<EmuVcpu*>(user);
    vector = self->CorrectDoubleFault(vector);
    if (HasErrorCode(vector)) {
      self->Fatal(absl::StrFormat(
          "emu vCPU %u: guest exception %u at RIP %#x is not supported by the emu accelerator "
          "(Unicorn does not report exception error codes)",
          self->id_, vector, self->ReadRegister(UC_X86_REG_RIP)));
    } else {
      self->pending_exception_ = vector;
    }
    uc_emu_stop(uc);
  }

  // Records the address for the error the failed access ends the vCPU with.
  static bool OnUnmapped(uc_engine*, uc_mem_type type, uint64_t address, int size, int64_t,
                         void* user) {
    static_cast<EmuVcpu*>(user)->unmapped_access_ = address;
    return false;
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

  const uint32_t id_;
  EmuVmState& vm_;
  const memory::GuestMemory& memory_;
  uc_engine* uc_ = nullptr;
  std::vector<std::unique_ptr<MmioWindow>> mmio_windows_;
  std::thread thread_;

  absl::Mutex mutex_;
  bool caller_turn_ ABSL_GUARDED_BY(mutex_) = true;
  bool exiting_ ABSL_GUARDED_BY(mutex_) = false;
  bool kick_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<Exit> exit_ ABSL_GUARDED_BY(mutex_);
  bool awaiting_value_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<uint64_t> value_ ABSL_GUARDED_BY(mutex_);
  std::bitset<256> pending_interrupts_ ABSL_GUARDED_BY(mutex_);
  std::optional<PvhEntry> start_request_ ABSL_GUARDED_BY(mutex_);
  bool started_ ABSL_GUARDED_BY(mutex_) = false;

  absl::Mutex cpuid_mutex_;
  CpuidLeaf model_leaf1_;  // set before the emulation thread starts
  std::vector<CpuidLeaf> cpuid_ ABSL_GUARDED_BY(cpuid_mutex_);

  // Other threads ask for a stop; OnBlock carries it out between translation blocks.
  std::atomic<bool> stop_wanted_{false};
  // An interrupt waits for RFLAGS.IF: OnBlock stops the engine once the guest sets it.
  std::atomic<bool> interrupt_window_wanted_{false};
  // Emulation thread only (read by the Await conditions, which run under mutex_ on any thread, only
  // while the emulation thread itself waits).
  bool halted_ = false;
  struct BlockStop {
    uint64_t address;
    uint64_t rsp;
  };
  std::optional<BlockStop> block_stop_;  // the block hook's stop, for RepairBlockStop
  bool stop_requested_ = false;  // the engine was stopped on purpose (not by HLT)
  std::optional<std::string> fatal_error_;
  std::optional<uint32_t> pending_exception_;
  std::optional<uint64_t> unmapped_access_;
  std::optional<uc_hook> trace_hook_;
  uint64_t trace_budget_ = 0;
  bool trace_remove_requested_ = false;
};

class EmuAccelerator final : public Accelerator {
 public:
  explicit EmuAccelerator(const memory::GuestMemory& memory) : vm_(memory) {
    capabilities_.name = "emu";
  }
  const Capabilities& capabilities() const override { return capabilities_; }
  uint64_t tsc_khz() const override { return HostTscKhz(); }

  absl::Status EnableHypercallPage(uint32_t msr) override {
    if (msr == 0) return absl::InvalidArgumentError("the hypercall-page MSR must not be 0");
    vm_.hypercall_msr.store(msr);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(uint32_t id, std::optional<PvhEntry> boot) override {
    XENKVM_ASSIGN_OR_RETURN(std::unique_ptr<EmuVcpu> vcpu, EmuVcpu::Create(id, vm_, boot));
    return std::unique_ptr<Vcpu>(std::move(vcpu));
  }

 private:
  EmuVmState vm_;
  Capabilities capabilities_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Accelerator>> CreateEmuAccelerator(const memory::GuestMemory& memory) {
  return std::unique_ptr<Accelerator>(new EmuAccelerator(memory));
}

}  // namespace xenkvm::accel
