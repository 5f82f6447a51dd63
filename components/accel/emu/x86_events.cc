#include "components/accel/emu/x86_events.h"

namespace xenkvm::accel::emu {
namespace {

enum class ExceptionClass { kBenign, kContributory, kPageFault, kDoubleFault };

ExceptionClass ClassOf(uint32_t vector) {
  switch (vector) {
    case kVectorDivideError:
    case kVectorInvalidTss:
    case kVectorSegmentNotPresent:
    case kVectorStackFault:
    case kVectorGeneralProtection:
      return ExceptionClass::kContributory;
    case kVectorPageFault:
      return ExceptionClass::kPageFault;
    case kVectorDoubleFault:
      return ExceptionClass::kDoubleFault;
    default:
      return ExceptionClass::kBenign;
  }
}

uint64_t Bits(uint64_t value, int low, int count) { return (value >> low) & ((uint64_t{1} << count) - 1); }

}  // namespace

bool HasErrorCode(uint32_t vector) {
  return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 || vector == 29 ||
         vector == 30;
}

Escalation Escalate(uint32_t first, uint32_t second) {
  const ExceptionClass a = ClassOf(first), b = ClassOf(second);
  if (a == ExceptionClass::kDoubleFault) {
    return b == ExceptionClass::kBenign ? Escalation::kDeliverSecond : Escalation::kTripleFault;
  }
  if (a == ExceptionClass::kContributory && b == ExceptionClass::kContributory) return Escalation::kDoubleFault;
  if (a == ExceptionClass::kPageFault &&
      (b == ExceptionClass::kContributory || b == ExceptionClass::kPageFault)) {
    return Escalation::kDoubleFault;
  }
  return Escalation::kDeliverSecond;
}

uint32_t IdtErrorCode(uint32_t vector, bool external) { return (vector << 3) | 2 | (external ? 1 : 0); }

Gate DecodeGate(std::span<const uint8_t> bytes, bool long_mode) {
  auto le = [&bytes](size_t at, int count) {
    uint64_t value = 0;
    for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[at + i];
    return value;
  };
  Gate gate;
  gate.present = (bytes[5] & 0x80) != 0;
  gate.dpl = (bytes[5] >> 5) & 3;
  gate.type = bytes[5] & 0x1f;  // S (bit 4) set is no gate at all
  gate.selector = static_cast<uint16_t>(le(2, 2));
  gate.offset = le(0, 2) | (le(6, 2) << 16);
  if (long_mode && bytes.size() >= 16) {
    gate.offset |= le(8, 4) << 32;
    gate.ist = bytes[4] & 7;
  }
  return gate;
}

SegmentDescriptor DecodeSegment(uint64_t raw) {
  SegmentDescriptor d;
  d.raw = raw;
  const uint64_t access = Bits(raw, 40, 8);
  d.present = (access & 0x80) != 0;
  d.dpl = static_cast<uint8_t>((access >> 5) & 3);
  d.system = (access & 0x10) == 0;
  d.code = !d.system && (access & 0x08) != 0;
  d.conforming = d.code && (access & 0x04) != 0;
  d.writable = !d.system && !d.code && (access & 0x02) != 0;
  d.long_mode = Bits(raw, 53, 1) != 0;
  d.big = Bits(raw, 54, 1) != 0;
  d.base = Bits(raw, 16, 24) | (Bits(raw, 56, 8) << 24);
  const uint64_t limit = Bits(raw, 0, 16) | (Bits(raw, 48, 4) << 16);
  d.limit = Bits(raw, 55, 1) ? (limit << 12) | 0xfff : limit;
  return d;
}

uint32_t PageFaultErrorCode(const PageWalk& walk, const FaultingAccess& access) {
  uint32_t code = access.user ? kPfUser : 0;
  if (access.fetch && access.report_fetch) code |= kPfFetch;
  if (!walk.present) return code;  // reported as a read (or fetch): see the header
  code |= kPfPresent;
  if (walk.reserved_bit) return code | kPfReserved;
  if (access.fetch) return code;                     // XD, or a user fetch of a supervisor page
  if (access.user && !walk.user) return code;        // any access faults there: a read is the likelier
  if (!walk.writable && (access.user || access.write_protect)) return code | kPfWrite;
  // The walk permits every access (the guest changed its tables without INVLPG, or SMAP): a write,
  // where writing is allowed, is the likelier.
  return walk.writable ? code | kPfWrite : code;
}

}  // namespace xenkvm::accel::emu
