// The emu backend's private code and tables, as pure data (no Unicorn): they live in a private
// window below 4 GiB, in the MMIO hole where no guest RAM is, mapped into a vCPU's engine only while
// the backend runs them.
// - The boot trampoline takes Unicorn's paging-less long mode (its reset state) to the PVH entry
//   state: real long mode, a far return to 32-bit code, long mode left, flat segments, EBX = start_info.
//   The start-up trampoline goes on from there to real mode, as an application processor starts.
// - The ring-change trampoline raises the privilege level. Unicorn never delivers an interrupt or
//   SYSCALL itself and its register interface cannot load a segment's hidden state in 64-bit mode,
//   so the backend lets the CPU model do it architecturally: user code in the window makes a far
//   call through a call gate in a private GDT, whose target code (and, outside long mode, stack)
//   descriptors are copies of the guest's, with a private TSS for the stack switch. The guest's
//   GDT, TSS and memory are never touched.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_TRAMPOLINES_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_TRAMPOLINES_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "components/accel/accelerator.h"

namespace xenkvm::accel::emu {

inline constexpr uint64_t kWindowBase = 0xffff8000;
inline constexpr uint64_t kWindowSize = 0x8000;

struct WindowPiece {
  uint64_t address;
  std::vector<uint8_t> bytes;
};

struct BootTrampoline {
  std::vector<WindowPiece> pieces;
  uint64_t start = 0;  // where to begin (64-bit code)
  uint64_t stack = 0;  // RSP while it runs
  uint64_t until = 0;  // the linear address it ends at, the guest's first instruction
};
BootTrampoline BuildBootTrampoline(const PvhEntry& boot);
// To the state a start-up IPI leaves: real mode at `vector`:0000 (CS = vector << 8, base
// vector << 12), other segments 0 with 64 KiB limits, the IVT at 0 (IDTR limit 0xffff), general
// registers 0, paging and protection off.
BootTrampoline BuildStartupTrampoline(uint8_t vector);

// Where a ring change lands: CPL 0 with these selectors, their hidden state loaded from these
// descriptors. `ss_*` matter outside long mode only (64-bit gates load a null SS).
struct RingChange {
  bool long_mode = false;
  uint16_t cs_selector = 0;
  uint64_t cs_descriptor = 0;  // a present, DPL-0, non-conforming code descriptor
  uint16_t ss_selector = 0;
  uint64_t ss_descriptor = 0;  // a present, DPL-0, writable data descriptor
};

struct RingChangeTrampoline {
  std::vector<WindowPiece> pieces;
  uint64_t start = 0;    // run from here at the guest's CPL 3, RAX = far_pointer, ...
  uint64_t far_pointer = 0;
  uint64_t landing = 0;  // ... until here, reached at CPL 0
  uint64_t cr3 = 0;      // long mode: private tables mapping the window (elsewhere: paging off)
  uint64_t gdt_base = 0;
  uint16_t gdt_limit = 0;
  uint16_t tr_selector = 0;
  uint64_t tss_base = 0;
  uint32_t tss_limit = 0;
};
// kInvalidArgument for descriptors a ring change cannot load or selectors beyond the private GDT.
absl::StatusOr<RingChangeTrampoline> BuildRingChangeTrampoline(const RingChange& change);

// The emu hypercall page: stub n is `mov $(cpuid_magic | n), %eax; cpuid; ret`.
std::vector<uint8_t> EmuHypercallPage(uint32_t cpuid_magic);

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_TRAMPOLINES_H_
