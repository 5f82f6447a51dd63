// The architecture's rules for interrupt and exception delivery, as pure functions the emu backend
// applies (Unicorn reports an exception's vector and nothing else; it never delivers one): which
// vectors push an error code, how a fault during delivery escalates (#DF, triple fault), IDT gates
// and segment descriptors decoded, and a page fault's error code worked out from a page walk.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_X86_EVENTS_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_X86_EVENTS_H_

#include <cstdint>
#include <span>

#include "components/accel/page_walk.h"

namespace xenkvm::accel::emu {

inline constexpr uint32_t kVectorDivideError = 0;
inline constexpr uint32_t kVectorNmi = 2;
inline constexpr uint32_t kVectorBreakpoint = 3;
inline constexpr uint32_t kVectorInvalidOpcode = 6;
inline constexpr uint32_t kVectorDoubleFault = 8;
inline constexpr uint32_t kVectorInvalidTss = 10;
inline constexpr uint32_t kVectorSegmentNotPresent = 11;
inline constexpr uint32_t kVectorStackFault = 12;
inline constexpr uint32_t kVectorGeneralProtection = 13;
inline constexpr uint32_t kVectorPageFault = 14;

// #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX push an error code; nothing else does.
bool HasErrorCode(uint32_t vector);

// What the CPU does when delivering `first` raises `second` (SDM Vol. 3, table 6-5).
enum class Escalation { kDeliverSecond, kDoubleFault, kTripleFault };
Escalation Escalate(uint32_t first, uint32_t second);

// The error code of a fault that names an IDT entry (a gate that is absent, of the wrong kind, or
// beyond the limit): index, IDT bit, EXT for events not caused by INT n.
uint32_t IdtErrorCode(uint32_t vector, bool external);

// An IDT entry. 32-bit gates are 8 bytes, long-mode gates 16.
struct Gate {
  bool present = false;
  uint8_t type = 0;  // 0xe interrupt gate, 0xf trap gate, 0x5 task gate (0x6/0x7: 16-bit gates)
  uint8_t dpl = 0;
  uint16_t selector = 0;
  uint64_t offset = 0;
  uint8_t ist = 0;  // long mode only
};
Gate DecodeGate(std::span<const uint8_t> bytes, bool long_mode);

// A code or data segment descriptor (8 bytes, from the GDT or LDT).
struct SegmentDescriptor {
  uint64_t raw = 0;
  bool present = false;
  bool system = false;  // S clear: a system descriptor (TSS, gate, LDT)
  bool code = false;
  bool conforming = false;  // code only
  bool writable = false;    // data only
  bool long_mode = false;   // L: 64-bit code
  bool big = false;         // D/B
  uint8_t dpl = 0;
  uint64_t base = 0;
  uint64_t limit = 0;  // in bytes, granularity applied
};
SegmentDescriptor DecodeSegment(uint64_t raw);
// The flat descriptors SYSCALL and SYSENTER load (base 0, limit 4 GiB, DPL 0).
inline constexpr uint64_t kFlatCode64Descriptor = 0x00af9b000000ffffull;
inline constexpr uint64_t kFlatCode32Descriptor = 0x00cf9b000000ffffull;
inline constexpr uint64_t kFlatDataDescriptor = 0x00cf93000000ffffull;

// Page-fault error code bits.
inline constexpr uint32_t kPfPresent = 1 << 0;
inline constexpr uint32_t kPfWrite = 1 << 1;
inline constexpr uint32_t kPfUser = 1 << 2;
inline constexpr uint32_t kPfReserved = 1 << 3;
inline constexpr uint32_t kPfFetch = 1 << 4;

// What the CPU knew about the access that faulted. Unicorn does not say whether it was a read or a
// write; `fetch` is inferred from CR2 lying within the instruction at RIP.
struct FaultingAccess {
  bool fetch = false;
  bool user = false;             // CPL 3
  bool write_protect = false;    // CR0.WP
  bool report_fetch = false;     // EFER.NXE or CR4.SMEP: only then does the CPU set I/D
};
// The error code a real CPU would push for a #PF whose linear address walks to `walk`. Where the
// access kind cannot be known it reports the one a correct OS recovers from: a not-present page is
// reported as read (a write then faults again on the read-only or present page, now as a write),
// a present read-only page as a write (the only access that faults there).
uint32_t PageFaultErrorCode(const PageWalk& walk, const FaultingAccess& access);

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_X86_EVENTS_H_
