// Test support: a one-vCPU KVM VM in 64-bit long mode (identity-mapped first 1 GiB, flat GDT, an IDT
// whose vector V handler writes V to port 0x20 and returns), and a byte emitter for hand-assembled
// guest code. Used by the behaviour tests, which skip when KVM is not usable.
#ifndef XENKVM_COMPONENTS_KVM_KVM_TEST_GUEST_H_
#define XENKVM_COMPONENTS_KVM_KVM_TEST_GUEST_H_

#include <linux/kvm.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "components/base/status.h"
#include "components/kvm/kvm.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::kvm::testing {

// Guest-physical layout.
inline constexpr uint64_t kPml4 = 0x1000;
inline constexpr uint64_t kPdpt = 0x2000;
inline constexpr uint64_t kPd = 0x3000;
inline constexpr uint64_t kGdt = 0x4000;
inline constexpr uint64_t kIdt = 0x5000;
inline constexpr uint64_t kHandlers = 0x6000;  // 8 bytes per vector
inline constexpr uint64_t kStackTop = 0xa000;
inline constexpr uint64_t kCode = 0x10000;
inline constexpr uint64_t kData = 0x20000;  // free pages for tests from here
inline constexpr uint64_t kMemorySize = 1 << 20;
inline constexpr uint64_t kMmioAddress = 0x200000;  // mapped by the page tables, not by RAM
inline constexpr uint16_t kVectorReportPort = 0x20;

// Little helper to hand-assemble x86-64 code.
class Code {
 public:
  Code& Bytes(std::initializer_list<uint8_t> bytes) {
    bytes_.insert(bytes_.end(), bytes);
    return *this;
  }
  Code& Imm32(uint32_t value) {
    for (int i = 0; i < 4; ++i) bytes_.push_back(static_cast<uint8_t>(value >> (8 * i)));
    return *this;
  }
  Code& Imm64(uint64_t value) {
    for (int i = 0; i < 8; ++i) bytes_.push_back(static_cast<uint8_t>(value >> (8 * i)));
    return *this;
  }
  Code& MovAlImm(uint8_t value) { return Bytes({0xb0, value}); }
  Code& MovEaxImm(uint32_t value) { return Bytes({0xb8}).Imm32(value); }
  Code& OutImmAl(uint8_t port) { return Bytes({0xe6, port}); }
  Code& OutImmEax(uint8_t port) { return Bytes({0xe7, port}); }
  Code& InAlImm(uint8_t port) { return Bytes({0xe4, port}); }
  // mov r64, sign-extended imm32. `reg` is the x86 register number (rax 0, rdx 2, rsi 6, rdi 7,
  // r8 8, r9 9, r10 10...).
  Code& MovRegImm(unsigned reg, uint32_t value) {
    return Bytes({static_cast<uint8_t>(reg >= 8 ? 0x49 : 0x48), 0xc7,
                  static_cast<uint8_t>(0xc0 | (reg & 7))})
        .Imm32(value);
  }
  Code& MovRaxImm64(uint64_t value) { return Bytes({0x48, 0xb8}).Imm64(value); }
  Code& CallRax() { return Bytes({0xff, 0xd0}); }
  Code& Vmcall() { return Bytes({0x0f, 0x01, 0xc1}); }
  Code& Wrmsr(uint32_t msr, uint64_t value) {
    Bytes({0xb9}).Imm32(msr);
    MovEaxImm(static_cast<uint32_t>(value));
    return Bytes({0xba}).Imm32(static_cast<uint32_t>(value >> 32)).Bytes({0x0f, 0x30});
  }
  Code& Sti() { return Bytes({0xfb}); }
  Code& Hlt() { return Bytes({0xf4}); }
  // A jump to itself: keeps the vCPU busy without exits.
  Code& Spin() { return Bytes({0xeb, 0xfe}); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

struct TestVm {
  Kvm kvm;
  Vm vm;
  memory::GuestMemory memory;
  std::vector<Vcpu> vcpus;

  // A VM with split irqchip, `vcpu_count` vCPUs (host CPUID, long mode at kCode) and the layout
  // above. `xen` overrides the probed Xen capabilities when given.
  static absl::StatusOr<std::unique_ptr<TestVm>> Create(int vcpu_count = 1) {
    XENKVM_ASSIGN_OR_RETURN(Kvm kvm, Kvm::Open());
    XENKVM_ASSIGN_OR_RETURN(Vm vm, kvm.CreateVm());
    XENKVM_ASSIGN_OR_RETURN(memory::GuestMemory memory,
                            memory::GuestMemory::Create({{memory::GuestAddress(0), kMemorySize}}));
    XENKVM_RETURN_IF_ERROR(vm.MapGuestMemory(memory));
    XENKVM_RETURN_IF_ERROR(vm.EnableSplitIrqchip());
    auto test_vm = std::unique_ptr<TestVm>(new TestVm{std::move(kvm), std::move(vm), std::move(memory), {}});
    XENKVM_RETURN_IF_ERROR(test_vm->WriteTables());
    XENKVM_ASSIGN_OR_RETURN(std::vector<kvm_cpuid_entry2> cpuid, test_vm->kvm.SupportedCpuid());
    for (int i = 0; i < vcpu_count; ++i) {
      XENKVM_ASSIGN_OR_RETURN(Vcpu vcpu, test_vm->vm.CreateVcpu(i));
      XENKVM_RETURN_IF_ERROR(vcpu.SetCpuid(cpuid));
      XENKVM_RETURN_IF_ERROR(EnterLongMode(vcpu, kCode));
      XENKVM_RETURN_IF_ERROR(EnableLapic(vcpu));
      test_vm->vcpus.push_back(std::move(vcpu));
    }
    return test_vm;
  }

  absl::Status LoadCode(const Code& code, uint64_t address = kCode) {
    return memory.Write(memory::GuestAddress(address), code.bytes());
  }

  static absl::Status EnterLongMode(Vcpu& vcpu, uint64_t rip) {
    XENKVM_ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu.GetSregs());
    kvm_segment code{};
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = 0x8;
    code.type = 11;
    code.present = 1;
    code.s = 1;
    code.l = 1;
    code.g = 1;
    kvm_segment data = code;
    data.selector = 0x10;
    data.type = 3;
    data.l = 0;
    data.db = 1;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.gdt.base = kGdt;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.idt.base = kIdt;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr3 = kPml4;
    sregs.cr4 = 1u << 5 | 1u << 9 | 1u << 10;  // PAE, OSFXSR, OSXMMEXCPT
    sregs.cr0 = 0x80050033;                      // PG, AM, WP, NE, ET, MP, PE
    sregs.efer = 0x500;                          // LME | LMA
    XENKVM_RETURN_IF_ERROR(vcpu.SetSregs(sregs));
    kvm_regs regs{};
    regs.rip = rip;
    regs.rsp = kStackTop;
    regs.rflags = 2;
    return vcpu.SetRegs(regs);
  }

  // Software-enables the LAPIC (spurious-vector register bit 8) so fixed interrupts are accepted.
  static absl::Status EnableLapic(Vcpu& vcpu) {
    XENKVM_ASSIGN_OR_RETURN(kvm_lapic_state lapic, vcpu.GetLapic());
    uint32_t svr = 0x1ff;
    std::memcpy(&lapic.regs[0xf0], &svr, sizeof(svr));
    return vcpu.SetLapic(lapic);
  }

 private:
  absl::Status WriteTables() {
    using memory::GuestAddress;
    XENKVM_RETURN_IF_ERROR(memory.WriteObject<uint64_t>(GuestAddress(kPml4), kPdpt | 3));
    XENKVM_RETURN_IF_ERROR(memory.WriteObject<uint64_t>(GuestAddress(kPdpt), kPd | 3));
    for (uint64_t i = 0; i < 512; ++i) {  // 2 MiB pages: the first 1 GiB, identity-mapped
      XENKVM_RETURN_IF_ERROR(memory.WriteObject<uint64_t>(GuestAddress(kPd + 8 * i), (i << 21) | 0x83));
    }
    const uint64_t gdt[3] = {0, 0x00af9b000000ffffull, 0x00cf93000000ffffull};
    XENKVM_RETURN_IF_ERROR(memory.WriteObject(GuestAddress(kGdt), gdt));
    for (uint64_t vector = 0x20; vector < 256; ++vector) {
      uint64_t handler = kHandlers + vector * 8;
      // mov al, vector; out 0x20, al; iretq
      const uint8_t stub[8] = {0xb0, static_cast<uint8_t>(vector), 0xe6, kVectorReportPort, 0x48, 0xcf, 0x90, 0x90};
      XENKVM_RETURN_IF_ERROR(memory.WriteObject(GuestAddress(handler), stub));
      uint64_t gate[2];
      gate[0] = (handler & 0xffff) | (uint64_t{0x8} << 16) | (uint64_t{0x8e} << 40) |
                ((handler >> 16) & 0xffff) << 48;
      gate[1] = handler >> 32;
      XENKVM_RETURN_IF_ERROR(memory.WriteObject(GuestAddress(kIdt + vector * 16), gate));
    }
    return absl::OkStatus();
  }
};

}  // namespace xenkvm::kvm::testing

// Skips the test, with the reason, when KVM cannot run a VM on this machine.
#define XENKVM_SKIP_WITHOUT_KVM()                                                          \
  do {                                                                                     \
    if (absl::Status kvm_usable_ = ::xenkvm::kvm::KvmUsable(); !kvm_usable_.ok()) {        \
      GTEST_SKIP() << "needs a usable /dev/kvm: " << kvm_usable_.message();                \
    }                                                                                      \
  } while (0)

#endif  // XENKVM_COMPONENTS_KVM_KVM_TEST_GUEST_H_
