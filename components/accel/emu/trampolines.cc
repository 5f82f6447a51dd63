#include "components/accel/emu/trampolines.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "components/accel/emu/x86_events.h"

namespace xenkvm::accel::emu {
namespace {

constexpr uint32_t kMsrEfer = 0xc0000080;

void Append(std::vector<uint8_t>& code, std::initializer_list<uint8_t> bytes) { code.insert(code.end(), bytes); }
void Append16(std::vector<uint8_t>& code, uint16_t value) {
  for (int i = 0; i < 2; ++i) code.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void Append32(std::vector<uint8_t>& code, uint32_t value) {
  for (int i = 0; i < 4; ++i) code.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void Append64(std::vector<uint8_t>& code, uint64_t value) {
  for (int i = 0; i < 8; ++i) code.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void Put64(std::vector<uint8_t>& bytes, size_t offset, uint64_t value) {
  for (int i = 0; i < 8; ++i) bytes[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

// Window layout of the boot trampoline.
constexpr uint64_t kBootPml4 = kWindowBase;
constexpr uint64_t kBootPdpt = kWindowBase + 0x1000;
constexpr uint64_t kBootPd = kWindowBase + 0x2000;
constexpr uint64_t kBootGdt = kWindowBase + 0x3000;
constexpr uint64_t kBootGdtr = kWindowBase + 0x3100;
constexpr uint64_t kBootIdtr = kWindowBase + 0x3200;
constexpr uint64_t kBootCode64 = kWindowBase + 0x4000;
constexpr uint64_t kBootCode32 = kWindowBase + 0x4100;
constexpr uint64_t kBootCode16 = kWindowBase + 0x4200;

// Window layout of the ring-change trampoline: four levels of tables mapping the window's eight
// pages at their own addresses, user code, the supervisor landing page, the GDT, the TSS and stack.
constexpr uint64_t kRingPml4 = kWindowBase;
constexpr uint64_t kRingPdpt = kWindowBase + 0x1000;
constexpr uint64_t kRingPd = kWindowBase + 0x2000;
constexpr uint64_t kRingPt = kWindowBase + 0x3000;
constexpr uint64_t kRingUserCode = kWindowBase + 0x4000;
constexpr uint64_t kRingFarPointer = kRingUserCode + 0x10;
constexpr uint64_t kRingLanding = kWindowBase + 0x5000;
constexpr uint64_t kRingGdt = kWindowBase + 0x6000;
constexpr uint64_t kRingTss = kWindowBase + 0x7000;
constexpr uint64_t kRingStackTop = kWindowBase + 0x8000 - 16;
constexpr uint32_t kGdtEntries = 0x1000 / 8;

}  // namespace

namespace {

// From Unicorn's reset state to flat 32-bit protected mode with paging off, then `tail` (32-bit
// code) runs. Selectors: 0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code, 0x20 16-bit code
// based at the window, 0x28 16-bit data (64 KiB limits, for the way back to real mode).
BootTrampoline BuildProtectedModeTrampoline(const std::vector<uint8_t>& tail, std::vector<WindowPiece> extra) {
  std::vector<uint8_t> tables(0x3000, 0);
  Put64(tables, 0, kBootPdpt | 3);
  Put64(tables, 0x1000 + 3 * 8, kBootPd | 3);  // 3..4 GiB
  for (uint64_t i = 0; i < 512; ++i) Put64(tables, 0x2000 + i * 8, (0xc0000000 + (i << 21)) | 0x83);
  std::vector<uint8_t> gdt;
  Append64(gdt, 0);
  Append64(gdt, 0x00cf9b000000ffffull);  // 0x08: flat 32-bit code
  Append64(gdt, 0x00cf93000000ffffull);  // 0x10: flat data
  Append64(gdt, 0x00af9b000000ffffull);  // 0x18: 64-bit code
  static_assert(kWindowBase == 0xffff8000, "the 16-bit code descriptor below holds the window's base");
  Append64(gdt, 0xff009bff8000ffffull);  // 0x20: 16-bit code, base = the window, limit 64 KiB
  Append64(gdt, 0x000093000000ffffull);  // 0x28: 16-bit data, base 0, limit 64 KiB
  std::vector<uint8_t> gdtr;
  Append16(gdtr, static_cast<uint16_t>(gdt.size() - 1));
  Append64(gdtr, kBootGdt);

  std::vector<uint8_t> code64;
  Append(code64, {0x48, 0xb8});
  Append64(code64, kBootPml4);                    // mov rax, pml4
  Append(code64, {0x0f, 0x22, 0xd8});             // mov cr3, rax
  Append(code64, {0x0f, 0x20, 0xe0});             // mov rax, cr4
  Append(code64, {0x83, 0xc8, 0x20});             // or eax, PAE
  Append(code64, {0x0f, 0x22, 0xe0});             // mov cr4, rax
  Append(code64, {0x0f, 0x20, 0xc0});             // mov rax, cr0
  Append(code64, {0x0f, 0xba, 0xe8, 0x1f});       // bts eax, 31 (PG)
  Append(code64, {0x0f, 0x22, 0xc0});             // mov cr0, rax: real long mode
  Append(code64, {0x48, 0xb8});
  Append64(code64, kBootGdtr);                    // mov rax, gdtr
  Append(code64, {0x0f, 0x01, 0x10});             // lgdt [rax]
  Append(code64, {0x6a, 0x08});                   // push 0x08
  Append(code64, {0x48, 0xb8});
  Append64(code64, kBootCode32);                  // mov rax, code32
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
  code32.insert(code32.end(), tail.begin(), tail.end());

  BootTrampoline trampoline;
  trampoline.pieces = {{kBootPml4, std::move(tables)},
                       {kBootGdt, std::move(gdt)},
                       {kBootGdtr, std::move(gdtr)},
                       {kBootCode64, std::move(code64)},
                       {kBootCode32, std::move(code32)}};
  for (WindowPiece& piece : extra) trampoline.pieces.push_back(std::move(piece));
  trampoline.start = kBootCode64;
  trampoline.stack = kWindowBase + kWindowSize - 16;
  return trampoline;
}

}  // namespace

BootTrampoline BuildBootTrampoline(const PvhEntry& boot) {
  std::vector<uint8_t> tail;
  Append(tail, {0xbb});
  Append32(tail, boot.start_info);              // mov ebx, start_info
  Append(tail, {0x31, 0xc0, 0x31, 0xc9, 0x31, 0xd2});  // xor eax, ecx, edx
  Append(tail, {0x31, 0xf6, 0x31, 0xff, 0x31, 0xed});  // xor esi, edi, ebp
  Append(tail, {0xbc});
  Append32(tail, boot.stack_pointer);           // mov esp, stack_pointer
  Append(tail, {0xb8});
  Append32(tail, boot.entry);                   // mov eax, entry
  Append(tail, {0xff, 0xe0});                   // jmp eax
  BootTrampoline trampoline = BuildProtectedModeTrampoline(tail, {});
  trampoline.until = boot.entry;
  return trampoline;
}

BootTrampoline BuildStartupTrampoline(uint8_t vector) {
  std::vector<uint8_t> real_mode_idtr;  // the IVT as after INIT: base 0, limit 0xffff
  Append16(real_mode_idtr, 0xffff);
  Append32(real_mode_idtr, 0);
  std::vector<uint8_t> tail;
  Append(tail, {0x0f, 0x01, 0x1d});
  Append32(tail, static_cast<uint32_t>(kBootIdtr));  // lidt [idtr]
  Append(tail, {0xea});
  Append32(tail, static_cast<uint32_t>(kBootCode16 - kWindowBase));
  Append16(tail, 0x20);                         // ljmp 0x20:code16 (16-bit protected mode)
  std::vector<uint8_t> code16;
  Append(code16, {0xb8, 0x28, 0x00});           // mov ax, 0x28: 64 KiB data limits, as real mode's
  Append(code16, {0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x8e, 0xe0, 0x8e, 0xe8});  // ds es ss fs gs
  Append(code16, {0x0f, 0x20, 0xc0});           // mov eax, cr0
  Append(code16, {0x66, 0x83, 0xe0, 0xfe});     // and eax, ~PE
  Append(code16, {0x0f, 0x22, 0xc0});           // mov cr0, eax: real mode
  Append(code16, {0x31, 0xc0});                 // xor ax, ax
  Append(code16, {0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x8e, 0xe0, 0x8e, 0xe8});  // real-mode 0 segments
  for (uint8_t reg : {0xc0, 0xdb, 0xc9, 0xd2, 0xf6, 0xff, 0xed, 0xe4}) {
    Append(code16, {0x66, 0x31, reg});          // xor e?x: eax ebx ecx edx esi edi ebp esp
  }
  Append(code16, {0xea, 0x00, 0x00, 0x00, vector});  // ljmp vector:0000 (CS = vector << 8)
  BootTrampoline trampoline = BuildProtectedModeTrampoline(
      tail, {{kBootCode16, std::move(code16)}, {kBootIdtr, std::move(real_mode_idtr)}});
  trampoline.until = uint64_t{vector} << 12;
  return trampoline;
}

absl::StatusOr<RingChangeTrampoline> BuildRingChangeTrampoline(const RingChange& change) {
  const SegmentDescriptor cs = DecodeSegment(change.cs_descriptor);
  if (!cs.present || !cs.code || cs.conforming || cs.dpl != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "code segment %#x (descriptor %#x) is not a present, DPL-0, non-conforming code segment",
        change.cs_selector, change.cs_descriptor));
  }
  const uint32_t cs_index = change.cs_selector >> 3;
  const uint32_t ss_index = change.long_mode ? 0 : change.ss_selector >> 3;
  if (!change.long_mode) {
    const SegmentDescriptor ss = DecodeSegment(change.ss_descriptor);
    if (!ss.present || !ss.writable || ss.dpl != 0 || ss_index == 0 || (change.ss_selector & 4)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "stack segment %#x (descriptor %#x) is not a present, DPL-0, writable GDT data segment",
          change.ss_selector, change.ss_descriptor));
    }
  }
  if (cs_index == 0 || (change.cs_selector & 4) || cs_index >= kGdtEntries - 4 || ss_index >= kGdtEntries - 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "selectors %#x/%#x: a ring change supports GDT selectors up to %#x", change.cs_selector,
        change.ss_selector, (kGdtEntries - 5) << 3));
  }
  // The call gate (two slots in long mode) and the TSS descriptor's slot: the first free run.
  auto taken = [&](uint32_t index) { return index == 0 || index == cs_index || (ss_index != 0 && index == ss_index); };
  uint32_t gate_index = 1;
  while (taken(gate_index) || taken(gate_index + 1) || taken(gate_index + 2)) ++gate_index;

  RingChangeTrampoline t;
  std::vector<uint8_t> tables(0x4000, 0);
  Put64(tables, 0, kRingPdpt | 7);
  Put64(tables, 0x1000 + ((kWindowBase >> 30) & 0x1ff) * 8, kRingPd | 7);
  Put64(tables, 0x2000 + ((kWindowBase >> 21) & 0x1ff) * 8, kRingPt | 7);
  for (uint64_t page = kWindowBase; page < kWindowBase + kWindowSize; page += 0x1000) {
    const uint64_t rights = page == kRingUserCode ? 7 : 3;  // only the user code is user-accessible
    Put64(tables, 0x3000 + ((page >> 12) & 0x1ff) * 8, page | rights);
  }

  std::vector<uint8_t> code;
  // lcall *(%rax), RAX = the far pointer: the same in 32-bit, compatibility and 64-bit code (an
  // absolute disp32 would be sign-extended in 64-bit code; this window lies above 2 GiB).
  Append(code, {0xff, 0x18});
  code.resize(kRingFarPointer - kRingUserCode, 0xcc);
  Append32(code, 0);  // the offset: a call gate ignores it
  Append16(code, static_cast<uint16_t>((gate_index << 3) | 3));

  std::vector<uint8_t> gdt(kGdtEntries * 8, 0);
  Put64(gdt, cs_index * 8, change.cs_descriptor);
  if (ss_index != 0) Put64(gdt, ss_index * 8, change.ss_descriptor);
  const uint16_t target_selector = static_cast<uint16_t>(change.cs_selector & ~3);
  uint64_t gate = (kRingLanding & 0xffff) | (uint64_t{target_selector} << 16) | (uint64_t{0xec} << 40) |
                  (((kRingLanding >> 16) & 0xffff) << 48);  // present, DPL 3, call gate
  Put64(gdt, gate_index * 8, gate);
  if (change.long_mode) Put64(gdt, (gate_index + 1) * 8, kRingLanding >> 32);
  t.tr_selector = static_cast<uint16_t>((gate_index + 2) << 3);

  std::vector<uint8_t> tss(0x68, 0);
  if (change.long_mode) {
    Put64(tss, 4, kRingStackTop);  // RSP0
  } else {
    for (int i = 0; i < 4; ++i) tss[4 + i] = static_cast<uint8_t>(kRingStackTop >> (8 * i));  // ESP0
    tss[8] = static_cast<uint8_t>(change.ss_selector & ~3);  // SS0
    tss[9] = static_cast<uint8_t>(change.ss_selector >> 8);
  }

  t.pieces = {{kRingPml4, std::move(tables)},
              {kRingUserCode, std::move(code)},
              {kRingLanding, {0xf4}},
              {kRingGdt, std::move(gdt)},
              {kRingTss, std::move(tss)}};
  t.start = kRingUserCode;
  t.far_pointer = kRingFarPointer;
  t.landing = kRingLanding;
  t.cr3 = kRingPml4;
  t.gdt_base = kRingGdt;
  t.gdt_limit = kGdtEntries * 8 - 1;
  t.tss_base = kRingTss;
  t.tss_limit = 0x67;
  return t;
}

std::vector<uint8_t> EmuHypercallPage(uint32_t cpuid_magic) {
  std::vector<uint8_t> page(kHypercallPageSize, 0xcc);
  for (uint32_t number = 0; number < kHypercallPageSize / kHypercallStubSize; ++number) {
    std::vector<uint8_t> stub;
    Append(stub, {0xb8});
    Append32(stub, cpuid_magic | number);
    Append(stub, {0x0f, 0xa2, 0xc3});
    std::copy(stub.begin(), stub.end(), page.begin() + number * kHypercallStubSize);
  }
  return page;
}

}  // namespace xenkvm::accel::emu
