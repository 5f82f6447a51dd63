// shared_info and vcpu_info as the guest sees them, in the 64-bit or the 32-bit layout: event
// pending/mask bits, per-vCPU pending selectors and upcall flags, pvclock time and wallclock.
// The page lives in guest RAM at the frame the guest chose (XENMEM_add_to_physmap), as KVM keeps it;
// until then in a private page, whose contents move into the guest's page when it is mapped.
#ifndef XENKVM_COMPONENTS_XEN_SHARED_INFO_H_
#define XENKVM_COMPONENTS_XEN_SHARED_INFO_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>

namespace xenkvm::xen {

// pvclock parameters for one vCPU at one moment.
struct TimeInfo {
  uint64_t tsc_timestamp = 0;
  uint64_t system_time_ns = 0;
  uint32_t tsc_to_system_mul = 0;
  int8_t tsc_shift = 0;
};
// mul and shift turning TSC ticks at `tsc_khz` into nanoseconds (Xen's scale).
TimeInfo TimeScale(uint64_t tsc_khz);

inline constexpr uint32_t kVcpuInfoSize = 64;
inline constexpr uint32_t kPageSize = 4096;

// Bit and word operations on guest-shared memory, atomically (the guest changes these words too).
class SharedWords {
 public:
  static bool TestAndSetBit(uint8_t* word_base, uint32_t bit, bool wide);
  static bool TestAndClearBit(uint8_t* word_base, uint32_t bit, bool wide);
  static bool TestBit(const uint8_t* word_base, uint32_t bit, bool wide);
};

class SharedInfo {
 public:
  SharedInfo() { private_page_.fill(0); }

  // The layout: 64-bit (4096 ports, 64-bit selectors) or 32-bit (1024 ports).
  bool long_mode() const { return long_mode_; }
  void set_long_mode(bool long_mode) { long_mode_ = long_mode; }
  uint32_t port_limit() const;

  // Moves the page to `host` (a page of guest RAM, 4096 bytes, 8-byte aligned), copying its contents.
  void MapAt(uint8_t* host, uint64_t gpa);
  std::optional<uint64_t> gpa() const { return gpa_; }

  // 2-level event bits; a port at or beyond port_limit() has none (false, nothing changed).
  bool TestAndSetPending(uint32_t port);
  bool TestAndClearPending(uint32_t port);
  bool IsPending(uint32_t port) const;
  bool IsMasked(uint32_t port) const;
  bool TestAndClearMask(uint32_t port);
  bool TestAndSetMask(uint32_t port);

  // The default vcpu_info for `vcpu` (< 32), inside this page.
  uint8_t* DefaultVcpuInfo(uint32_t vcpu);

  // Wallclock at system time 0 (wc_version kept even between updates).
  void WriteWallclock(uint64_t seconds, uint32_t nanoseconds);

 private:
  uint8_t* page() { return host_ != nullptr ? host_ : private_page_.data(); }
  const uint8_t* page() const { return host_ != nullptr ? host_ : private_page_.data(); }
  uint32_t mask_offset() const { return long_mode_ ? 0xa00 : 0x880; }
  static constexpr uint32_t kPendingOffset = 0x800;

  bool long_mode_ = true;
  uint8_t* host_ = nullptr;
  std::optional<uint64_t> gpa_;
  alignas(8) std::array<uint8_t, kPageSize> private_page_;
};

// One vCPU's vcpu_info (in shared_info, or where VCPUOP_register_vcpu_info put it).
class VcpuInfo {
 public:
  VcpuInfo(uint8_t* host, bool long_mode) : host_(host), long_mode_(long_mode) {}
  // Sets bit `word` of evtchn_pending_sel; true if it was already set.
  bool TestAndSetPendingSelector(uint32_t word);
  // Sets evtchn_upcall_pending; true if it was already set.
  bool TestAndSetUpcallPending();
  bool upcall_pending() const;
  // pvclock: version odd while writing.
  void WriteTime(const TimeInfo& time);
  static void WriteTimeAt(uint8_t* time_info, const TimeInfo& time);

 private:
  uint8_t* host_;
  bool long_mode_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SHARED_INFO_H_
