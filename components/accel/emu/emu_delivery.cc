// Interrupts, exceptions and fast system calls, delivered as the architecture defines (Unicorn
// reports an exception's vector to a hook and drops it; SYSCALL and SYSENTER it only reports), and
// the instructions Unicorn takes for invalid that the backend carries out (VMCALL, SERIALIZE).
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_vcpu.h"
#include "components/accel/emu/x86_events.h"
#include "components/base/status.h"

namespace xenkvm::accel::emu {
namespace {

constexpr uint32_t kMsrEfer = 0xc0000080;
constexpr uint32_t kMsrSysenterCs = 0x174;
constexpr uint32_t kMsrSysenterEsp = 0x175;
constexpr uint32_t kMsrSysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xc0000081;
constexpr uint32_t kMsrLstar = 0xc0000082;
constexpr uint32_t kMsrCstar = 0xc0000083;
constexpr uint32_t kMsrFmask = 0xc0000084;
constexpr uint64_t kEferSce = 1 << 0;
constexpr uint64_t kEferNxe = 1 << 11;
constexpr uint64_t kCr0Pe = 1 << 0;
constexpr uint64_t kCr0Wp = 1 << 16;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Smep = 1 << 20;
constexpr uint64_t kRflagsTf = 1 << 8;
constexpr uint64_t kRflagsIf = 1 << 9;
constexpr uint64_t kRflagsNt = 1 << 14;
constexpr uint64_t kRflagsRf = 1 << 16;
constexpr uint64_t kRflagsAc = 1 << 18;
constexpr uint64_t kRflagsVm = 1 << 17;
// Flags an interrupt or exception clears on entry (and IF for interrupt gates).
constexpr uint64_t kRflagsClearedOnEntry = kRflagsTf | kRflagsNt | kRflagsRf | kRflagsVm;
// Delivery is retried this many times as faults escalate (an event, #GP, #DF, triple fault).
constexpr int kMaxDeliveryAttempts = 6;
// A private TSS descriptor's hidden flags as the CPU model keeps them: present, available 32/64-bit TSS.
constexpr uint32_t kTssFlags = 0x8900;

}  // namespace

PendingEvent EmuVcpu::PageFaultEvent(uint64_t cr2) {
  const uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  FaultingAccess access;
  access.fetch = cr2 - rip < 16;  // CR2 within the instruction at RIP
  access.user = Cpl() == 3;
  access.write_protect = (ReadRegister(UC_X86_REG_CR0) & kCr0Wp) != 0;
  access.report_fetch = (ReadMsr(kMsrEfer) & kEferNxe) || (ReadRegister(UC_X86_REG_CR4) & kCr4Smep);
  absl::StatusOr<PageWalk> walk = WalkLinear(memory_, Paging(), cr2);
  return PendingEvent{.vector = kVectorPageFault,
                      .error_code = PageFaultErrorCode(walk.ok() ? *walk : PageWalk{}, access),
                      .cr2 = cr2};
}

// What an exception hook reports, as an event: #PF's error code and CR2 (readable only inside the
// hook), INT n/INT3/INTO told from exceptions by the instruction before RIP (they trap past it).
std::optional<PendingEvent> EmuVcpu::EventFromHook(uint32_t vector) {
  if (vector == kVectorPageFault) return PageFaultEvent(ReadRegister(UC_X86_REG_CR2));
  PendingEvent event{.vector = vector};
  if (HasErrorCode(vector)) {
    event.error_code = 0;  // Unicorn does not report it; 0 is what most causes push
    return event;
  }
  const uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  std::array<uint8_t, 2> before{};
  if (rip >= 2 && FetchCode(rip - 2, before).ok()) {
    // An INT3 no longer in memory ran from stale translated code: another vCPU patched it (Linux's
    // text_poke_bp puts INT3 in and takes it out, serializing every CPU; this engine's flush after
    // SERIALIZE may still be deferred). A CPU would have run the current bytes: run them.
    if (vector == kVectorBreakpoint && before[1] != 0xcc && !(before[0] == 0xcd && before[1] == 3)) {
      stale_code_at_ = rip - 1;
      return std::nullopt;
    }
    const bool one_byte = (vector == kVectorBreakpoint && before[1] == 0xcc) || (vector == 4 && before[1] == 0xce);
    event.software = one_byte || vector >= 32 || (before[0] == 0xcd && before[1] == vector);
    event.instruction_length = one_byte ? 1 : 2;
  } else {
    event.software = vector >= 32;
    event.instruction_length = 2;
  }
  if (!event.software) event.instruction_length = 0;
  return event;
}

void EmuVcpu::DeliverEvent(PendingEvent event) {
  std::string history = absl::StrFormat("vector %u", event.vector);
  for (int attempt = 0; attempt < kMaxDeliveryAttempts; ++attempt) {
    absl::StatusOr<std::optional<DeliveryFault>> fault = TryDeliver(event);
    if (!fault.ok()) {
      Fatal(absl::StrFormat("emu vCPU %u: cannot deliver vector %u at RIP %#x: %s", id_, event.vector,
                            ReadRegister(UC_X86_REG_RIP), fault.status().message()));
      return;
    }
    if (!fault->has_value()) return;
    const DeliveryFault second = **fault;
    if (event.software) {  // the fault points at the INT instruction, not past it
      WriteRegister(UC_X86_REG_RIP, ReadRegister(UC_X86_REG_RIP) - event.instruction_length);
    }
    absl::StrAppendFormat(&history, ", then vector %u (error code %#x) delivering it", second.vector,
                          second.error_code);
    switch (Escalate(event.vector, second.vector)) {
      case Escalation::kDeliverSecond:
        event = PendingEvent{.vector = second.vector, .error_code = second.error_code, .cr2 = second.cr2};
        break;
      case Escalation::kDoubleFault:
        history += ": a double fault";
        event = PendingEvent{.vector = kVectorDoubleFault, .error_code = 0u};
        break;
      case Escalation::kTripleFault:
        shutdown_reason_ = absl::StrFormat("triple fault on vCPU %u at RIP %#x (%s)", id_,
                                           ReadRegister(UC_X86_REG_RIP), history);
        return;
    }
  }
  shutdown_reason_ = absl::StrFormat("triple fault on vCPU %u: delivery kept faulting (%s)", id_, history);
}

absl::StatusOr<uint64_t> EmuVcpu::ReadDescriptor(uint16_t selector) {
  uc_x86_mmr table{};
  uc_reg_read(uc_, (selector & 4) ? UC_X86_REG_LDTR : UC_X86_REG_GDTR, &table);
  const uint32_t offset = selector & ~7u;
  if ((selector & ~3u) == 0 || offset + 7 > table.limit) {
    return absl::OutOfRangeError(absl::StrFormat("selector %#x is null or beyond its table", selector));
  }
  uint64_t raw = 0;
  XENKVM_RETURN_IF_ERROR(ReadLinear(table.base + offset, std::span(reinterpret_cast<uint8_t*>(&raw), 8)));
  return raw;
}

absl::StatusOr<std::optional<DeliveryFault>> EmuVcpu::TryDeliver(const PendingEvent& event) {
  const uint32_t vector = event.vector;
  const bool external = !event.software;
  if (!(ReadRegister(UC_X86_REG_CR0) & kCr0Pe)) return TryDeliverRealMode(event);
  const uint64_t rflags = ReadRegister(UC_X86_REG_RFLAGS);
  if (rflags & kRflagsVm) return absl::FailedPreconditionError("virtual-8086 mode is not supported");
  auto fault = [](uint32_t fault_vector, uint32_t code, std::optional<uint64_t> cr2 = std::nullopt) {
    return std::optional<DeliveryFault>(DeliveryFault{fault_vector, code, cr2});
  };
  auto page_fault = [&](uint64_t address, bool write) {
    return fault(kVectorPageFault, write ? kPfWrite : 0, address);  // supervisor access, page not present
  };
  const bool long_mode = LongMode();
  const uint8_t cpl = Cpl();
  uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  if (event.external && !event.error_code) {
    std::array<uint8_t, 1> opcode{};
    if (FetchCode(rip, opcode).ok() && opcode[0] == 0xf4) rip += 1;  // an interrupt that ends a HLT
  }

  // The gate.
  uc_x86_mmr idtr{};
  uc_reg_read(uc_, UC_X86_REG_IDTR, &idtr);
  const uint32_t gate_size = long_mode ? 16 : 8;
  const uint32_t idt_error = IdtErrorCode(vector, external);
  if (uint64_t{vector} * gate_size + gate_size - 1 > idtr.limit) return fault(kVectorGeneralProtection, idt_error);
  std::array<uint8_t, 16> gate_bytes{};
  if (!ReadLinear(idtr.base + vector * gate_size, std::span(gate_bytes).first(gate_size)).ok()) {
    return page_fault(idtr.base + vector * gate_size, false);
  }
  const Gate gate = DecodeGate(std::span(gate_bytes).first(gate_size), long_mode);
  if (!long_mode && gate.type == 0x5) return absl::FailedPreconditionError("task gates are not supported");
  if (gate.type != 0xe && gate.type != 0xf) return fault(kVectorGeneralProtection, idt_error);
  if (event.software && gate.dpl < cpl) return fault(kVectorGeneralProtection, IdtErrorCode(vector, false));
  if (!gate.present) return fault(kVectorSegmentNotPresent, idt_error);

  // The handler's code segment and privilege level.
  const uint32_t ext = external ? 1 : 0;
  absl::StatusOr<uint64_t> cs_raw = ReadDescriptor(gate.selector);
  if (!cs_raw.ok()) return fault(kVectorGeneralProtection, (gate.selector & ~3u) | ext);
  const SegmentDescriptor cs = DecodeSegment(*cs_raw);
  if (!cs.code || (long_mode && !cs.long_mode)) return fault(kVectorGeneralProtection, (gate.selector & ~3u) | ext);
  if (!cs.present) return fault(kVectorSegmentNotPresent, (gate.selector & ~3u) | ext);
  const uint8_t new_cpl = cs.conforming ? cpl : cs.dpl;
  if (new_cpl > cpl) return fault(kVectorGeneralProtection, (gate.selector & ~3u) | ext);
  const bool privilege_change = new_cpl < cpl;
  if (privilege_change && new_cpl != 0) {
    return absl::FailedPreconditionError("a handler at privilege level 1 or 2 is not supported");
  }

  // The stack and the frame.
  uc_x86_mmr tr{};
  uc_reg_read(uc_, UC_X86_REG_TR, &tr);
  const uint64_t old_rsp = ReadRegister(UC_X86_REG_RSP);
  const uint64_t old_cs = ReadRegister(UC_X86_REG_CS), old_ss = ReadRegister(UC_X86_REG_SS);
  uint64_t rsp = old_rsp;
  std::vector<uint8_t> frame;  // lowest address first: each push goes in front, as on a stack
  RingChange change{long_mode, gate.selector, *cs_raw};
  auto push = [&frame](uint64_t value, size_t size) {
    frame.insert(frame.begin(), reinterpret_cast<const uint8_t*>(&value), reinterpret_cast<const uint8_t*>(&value) + size);
  };
  if (long_mode) {
    if (gate.ist != 0 || privilege_change) {
      const uint32_t offset = gate.ist != 0 ? 0x24 + 8 * (gate.ist - 1) : 4;
      if (offset + 7 > tr.limit) return fault(kVectorInvalidTss, (tr.selector & ~3u) | ext);
      if (!ReadLinear(tr.base + offset, std::span(reinterpret_cast<uint8_t*>(&rsp), 8)).ok()) {
        return page_fault(tr.base + offset, false);
      }
    }
    rsp &= ~uint64_t{0xf};
    for (uint64_t value : {old_ss, old_rsp, rflags, old_cs, rip}) push(value, 8);
    if (event.error_code && HasErrorCode(vector)) push(*event.error_code, 8);
  } else {
    if (privilege_change) {
      struct {
        uint32_t esp0;
        uint16_t ss0;
      } __attribute__((packed)) stack0{};
      if (4 + 5 > tr.limit) return fault(kVectorInvalidTss, (tr.selector & ~3u) | ext);
      if (!ReadLinear(tr.base + 4, std::span(reinterpret_cast<uint8_t*>(&stack0), sizeof(stack0))).ok()) {
        return page_fault(tr.base + 4, false);
      }
      absl::StatusOr<uint64_t> ss_raw = ReadDescriptor(stack0.ss0);
      if (!ss_raw.ok()) return fault(kVectorInvalidTss, (stack0.ss0 & ~3u) | ext);
      change.ss_selector = stack0.ss0;
      change.ss_descriptor = *ss_raw;
      rsp = stack0.esp0;
      push(old_ss, 4);
      push(old_rsp, 4);
    }
    for (uint64_t value : {rflags, old_cs, rip}) push(value, 4);
    if (event.error_code && HasErrorCode(vector)) push(*event.error_code, 4);
  }
  rsp = long_mode ? rsp - frame.size() : ((rsp - frame.size()) & 0xffffffff);
  if (!WriteLinear(rsp, frame).ok()) return page_fault(rsp, true);

  if (privilege_change) {
    XENKVM_RETURN_IF_ERROR(RaisePrivilege(change));
    if (long_mode) WriteRegister(UC_X86_REG_SS, 0);  // a null SS at CPL 0, as 64-bit delivery loads
  } else if ((gate.selector & ~3u) != (old_cs & ~3u)) {
    WriteRegister(UC_X86_REG_CS, gate.selector);
  }
  uint64_t new_rflags = rflags & ~kRflagsClearedOnEntry;
  if (gate.type == 0xe) new_rflags &= ~kRflagsIf;
  WriteRegister(UC_X86_REG_RSP, rsp);
  WriteRegister(UC_X86_REG_RFLAGS, new_rflags);
  if (event.cr2) {
    cr2_ = *event.cr2;
    RestoreCr2();
  }
  WriteRegister(UC_X86_REG_RIP, gate.offset);
  return std::optional<DeliveryFault>();
}

// Real mode: the interrupt vector table at IDTR (4-byte segment:offset entries), FLAGS, CS and IP
// pushed on SS:SP, IF, TF, AC cleared. Segments are taken as real mode's (base = selector << 4).
absl::StatusOr<std::optional<DeliveryFault>> EmuVcpu::TryDeliverRealMode(const PendingEvent& event) {
  uc_x86_mmr idtr{};
  uc_reg_read(uc_, UC_X86_REG_IDTR, &idtr);
  if (uint64_t{event.vector} * 4 + 3 > idtr.limit) {
    return std::optional<DeliveryFault>(DeliveryFault{kVectorGeneralProtection, 0, std::nullopt});
  }
  std::array<uint16_t, 2> entry{};  // offset, segment
  XENKVM_RETURN_IF_ERROR(ReadLinear(idtr.base + event.vector * 4, std::span(reinterpret_cast<uint8_t*>(entry.data()), 4)));
  const uint64_t cs = ReadRegister(UC_X86_REG_CS);
  uint64_t ip = ReadRegister(UC_X86_REG_RIP) & 0xffff;
  if (event.external) {
    std::array<uint8_t, 1> opcode{};
    if (ReadLinear((cs << 4) + ip, opcode).ok() && opcode[0] == 0xf4) ip = (ip + 1) & 0xffff;  // ends a HLT
  }
  const uint64_t rflags = ReadRegister(UC_X86_REG_RFLAGS);
  const uint64_t rsp = ReadRegister(UC_X86_REG_RSP);
  const uint16_t sp = static_cast<uint16_t>(rsp - 6);
  const std::array<uint16_t, 3> frame = {static_cast<uint16_t>(ip), static_cast<uint16_t>(cs),
                                         static_cast<uint16_t>(rflags)};
  XENKVM_RETURN_IF_ERROR(WriteLinear((ReadRegister(UC_X86_REG_SS) << 4) + sp,
                                     std::span(reinterpret_cast<const uint8_t*>(frame.data()), 6)));
  WriteRegister(UC_X86_REG_RSP, (rsp & ~uint64_t{0xffff}) | sp);
  WriteRegister(UC_X86_REG_RFLAGS, rflags & ~(kRflagsIf | kRflagsTf | kRflagsAc | kRflagsRf));
  WriteRegister(UC_X86_REG_CS, entry[1]);  // a real-mode load: base = selector << 4
  WriteRegister(UC_X86_REG_RIP, entry[0]);
  return std::optional<DeliveryFault>();
}

absl::Status EmuVcpu::RaisePrivilege(const RingChange& change) {
  XENKVM_ASSIGN_OR_RETURN(RingChangeTrampoline trampoline, BuildRingChangeTrampoline(change));
  const uint64_t cr0 = ReadRegister(UC_X86_REG_CR0), cr3 = ReadRegister(UC_X86_REG_CR3);
  const uint64_t rflags = ReadRegister(UC_X86_REG_RFLAGS), rax = ReadRegister(UC_X86_REG_RAX);
  uc_x86_mmr gdtr{}, tr{};
  uc_reg_read(uc_, UC_X86_REG_GDTR, &gdtr);
  uc_reg_read(uc_, UC_X86_REG_TR, &tr);

  XENKVM_RETURN_IF_ERROR(MapWindow(trampoline.pieces));
  uc_x86_mmr private_gdtr{0, trampoline.gdt_base, trampoline.gdt_limit, 0};
  uc_x86_mmr private_tr{trampoline.tr_selector, trampoline.tss_base, trampoline.tss_limit, kTssFlags};
  uc_reg_write(uc_, UC_X86_REG_GDTR, &private_gdtr);
  uc_reg_write(uc_, UC_X86_REG_TR, &private_tr);
  if (change.long_mode) {
    WriteRegister(UC_X86_REG_CR3, trampoline.cr3);
  } else {
    WriteRegister(UC_X86_REG_CR0, cr0 & ~kCr0Pg);  // the window's addresses are physical ones
  }
  WriteRegister(UC_X86_REG_RFLAGS, rflags & ~(kRflagsTf | kRflagsRf));
  WriteRegister(UC_X86_REG_RAX, trampoline.far_pointer);
  absl::Status ran = RunPrivate(trampoline.start, trampoline.landing, "ring-change trampoline");
  WriteRegister(UC_X86_REG_RAX, rax);
  if (change.long_mode) {
    WriteRegister(UC_X86_REG_CR3, cr3);
  } else {
    WriteRegister(UC_X86_REG_CR0, cr0);
  }
  uc_reg_write(uc_, UC_X86_REG_GDTR, &gdtr);
  uc_reg_write(uc_, UC_X86_REG_TR, &tr);
  UnmapWindow();
  XENKVM_RETURN_IF_ERROR(ran);
  if (Cpl() != 0) return absl::InternalError("the ring-change trampoline did not reach CPL 0");
  return absl::OkStatus();
}

// SYSCALL and SYSENTER as the CPU carries them out; RIP is already past the instruction.
void EmuVcpu::CarryOutFastSystemCall(FastSystemCall call) {
  const bool long_mode = LongMode();
  const uint64_t next_rip = ReadRegister(UC_X86_REG_RIP);
  const uint64_t rflags = ReadRegister(UC_X86_REG_RFLAGS);
  RingChange change{long_mode};
  uint64_t target = 0, new_rflags = 0;
  std::optional<uint64_t> new_rsp;
  if (call == FastSystemCall::kSyscall) {
    if (!(ReadMsr(kMsrEfer) & kEferSce)) {
      WriteRegister(UC_X86_REG_RIP, next_rip - 2);
      DeliverEvent(PendingEvent{.vector = kVectorInvalidOpcode});
      return;
    }
    const uint64_t star = ReadMsr(kMsrStar);
    change.cs_selector = static_cast<uint16_t>((star >> 32) & 0xfffc);
    if (long_mode) {
      absl::StatusOr<uint64_t> user_cs = ReadDescriptor(static_cast<uint16_t>(ReadRegister(UC_X86_REG_CS)));
      const bool from_64bit = user_cs.ok() && DecodeSegment(*user_cs).long_mode;
      target = ReadMsr(from_64bit ? kMsrLstar : kMsrCstar);
      WriteRegister(UC_X86_REG_RCX, next_rip);
      WriteRegister(UC_X86_REG_R11, rflags & ~kRflagsRf);
      new_rflags = rflags & ~ReadMsr(kMsrFmask) & ~kRflagsRf;
    } else {
      target = star & 0xffffffff;
      WriteRegister(UC_X86_REG_RCX, next_rip & 0xffffffff);
      new_rflags = rflags & ~(kRflagsIf | kRflagsRf | kRflagsVm);
    }
  } else {
    const uint64_t sysenter_cs = ReadMsr(kMsrSysenterCs);
    if ((sysenter_cs & 0xfffc) == 0) {
      WriteRegister(UC_X86_REG_RIP, next_rip - 2);
      DeliverEvent(PendingEvent{.vector = kVectorGeneralProtection, .error_code = 0u});
      return;
    }
    change.cs_selector = static_cast<uint16_t>(sysenter_cs & 0xfffc);
    target = ReadMsr(kMsrSysenterEip);
    new_rsp = ReadMsr(kMsrSysenterEsp);
    new_rflags = rflags & ~(kRflagsIf | kRflagsRf | kRflagsVm);
  }
  change.cs_descriptor = long_mode ? kFlatCode64Descriptor : kFlatCode32Descriptor;
  change.ss_selector = static_cast<uint16_t>(change.cs_selector + 8);
  change.ss_descriptor = kFlatDataDescriptor;
  // SYSCALL keeps RSP; the trampoline's own stack switch must not show.
  if (!new_rsp) new_rsp = ReadRegister(UC_X86_REG_RSP);
  if (Cpl() != 0) {
    if (absl::Status raised = RaisePrivilege(change); !raised.ok()) {
      Fatal(absl::StrFormat("emu vCPU %u: %s at RIP %#x: %s", id_,
                            call == FastSystemCall::kSyscall ? "SYSCALL" : "SYSENTER", next_rip, raised.message()));
      return;
    }
  } else {
    WriteRegister(UC_X86_REG_CS, change.cs_selector);
  }
  WriteRegister(UC_X86_REG_SS, change.ss_selector);
  WriteRegister(UC_X86_REG_RSP, long_mode || call == FastSystemCall::kSyscall ? *new_rsp : (*new_rsp & 0xffffffff));
  WriteRegister(UC_X86_REG_RFLAGS, new_rflags);
  WriteRegister(UC_X86_REG_RIP, target);
}

// VMCALL and VMMCALL are #UD to Unicorn; they are Xen hypercalls (RAX = number).
bool EmuVcpu::HandleInlineHypercall() {
  const uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  std::array<uint8_t, 3> bytes{};
  if (!FetchCode(rip, bytes).ok() || bytes[0] != 0x0f || bytes[1] != 0x01 ||
      (bytes[2] != 0xc1 && bytes[2] != 0xd9)) {
    return false;
  }
  HypercallExit call = HypercallFromRegisters(ReadRegister(UC_X86_REG_RAX));
  const bool long_mode = call.long_mode;
  const uint64_t result = Deliver(call, true);
  WriteHypercallResult(result, long_mode);
  WriteRegister(UC_X86_REG_RIP, rip + 3);
  stop_requested_ = true;
  return true;
}

// SERIALIZE (0f 01 e8), #UD to Unicorn, is carried out here: the guest serializes after changing
// code (Linux's sync_core), which is when translated code must go. Unicorn 2.1.1 misses writes to
// code through most virtual aliases (its write check looks the virtual address up as a physical
// one), so stale translations of changed code would otherwise run: Linux's boot-time alternatives
// stayed unpatched for the emulator, and loading a module jumped into freed init memory.
bool EmuVcpu::HandleSerialize() {
  const uint64_t rip = ReadRegister(UC_X86_REG_RIP);
  std::array<uint8_t, 3> bytes{};
  if (!FetchCode(rip, bytes).ok() || bytes != std::array<uint8_t, 3>{0x0f, 0x01, 0xe8}) return false;
  flush_translations_ = true;
  WriteRegister(UC_X86_REG_RIP, rip + 3);
  return true;
}

}  // namespace xenkvm::accel::emu
