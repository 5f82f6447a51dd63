#include "components/xen/shared_info.h"

#include <cstring>

#include "components/xen/config.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kNsPerSecond = 1'000'000'000;

template <typename T>
std::atomic_ref<T> Word(uint8_t* base, uint32_t index) {
  return std::atomic_ref<T>(*reinterpret_cast<T*>(base + index * sizeof(T)));
}

// vcpu_info fields.
constexpr uint32_t kUpcallPending = 0;
constexpr uint32_t kPendingSel64 = 8, kPendingSel32 = 4;
constexpr uint32_t kTimeOffset = 32;
// vcpu_time_info fields.
constexpr uint32_t kTimeVersion = 0, kTscTimestamp = 8, kSystemTime = 16, kMul = 24, kShift = 28, kFlags = 29;
constexpr uint8_t kPvclockTscStable = 1;

}  // namespace

TimeInfo TimeScale(uint64_t tsc_khz) {
  TimeInfo scale;
  uint64_t ticks_per_second = tsc_khz * 1000;
  int shift = 0;
  while (ticks_per_second > 2 * kNsPerSecond) {
    ticks_per_second >>= 1;
    --shift;
  }
  uint32_t ticks = static_cast<uint32_t>(ticks_per_second);
  while (ticks <= kNsPerSecond) {
    ticks <<= 1;
    ++shift;
  }
  scale.tsc_to_system_mul = static_cast<uint32_t>((kNsPerSecond << 32) / ticks);
  scale.tsc_shift = static_cast<int8_t>(shift);
  return scale;
}

bool SharedWords::TestAndSetBit(uint8_t* base, uint32_t bit, bool wide) {
  if (wide) {
    uint64_t mask = uint64_t{1} << (bit % 64);
    return (Word<uint64_t>(base, bit / 64).fetch_or(mask) & mask) != 0;
  }
  uint32_t mask = uint32_t{1} << (bit % 32);
  return (Word<uint32_t>(base, bit / 32).fetch_or(mask) & mask) != 0;
}

bool SharedWords::TestAndClearBit(uint8_t* base, uint32_t bit, bool wide) {
  if (wide) {
    uint64_t mask = uint64_t{1} << (bit % 64);
    return (Word<uint64_t>(base, bit / 64).fetch_and(~mask) & mask) != 0;
  }
  uint32_t mask = uint32_t{1} << (bit % 32);
  return (Word<uint32_t>(base, bit / 32).fetch_and(~mask) & mask) != 0;
}

bool SharedWords::TestBit(const uint8_t* base, uint32_t bit, bool wide) {
  uint8_t* mutable_base = const_cast<uint8_t*>(base);
  if (wide) return (Word<uint64_t>(mutable_base, bit / 64).load() >> (bit % 64)) & 1;
  return (Word<uint32_t>(mutable_base, bit / 32).load() >> (bit % 32)) & 1;
}

uint32_t SharedInfo::port_limit() const { return long_mode_ ? kMaxPorts64 : kMaxPorts32; }

void SharedInfo::MapAt(uint8_t* host, uint64_t gpa) {
  if (host == host_) return;
  std::array<uint8_t, kPageSize> contents;
  std::memcpy(contents.data(), page(), kPageSize);
  host_ = host;
  gpa_ = gpa;
  std::memcpy(host_, contents.data(), kPageSize);
}

bool SharedInfo::TestAndSetPending(uint32_t port) {
  if (port >= port_limit()) return false;
  return SharedWords::TestAndSetBit(page() + kPendingOffset, port, long_mode_);
}
bool SharedInfo::TestAndClearPending(uint32_t port) {
  if (port >= port_limit()) return false;
  return SharedWords::TestAndClearBit(page() + kPendingOffset, port, long_mode_);
}
bool SharedInfo::IsPending(uint32_t port) const {
  if (port >= port_limit()) return false;
  return SharedWords::TestBit(page() + kPendingOffset, port, long_mode_);
}
bool SharedInfo::IsMasked(uint32_t port) const {
  if (port >= port_limit()) return false;
  return SharedWords::TestBit(page() + mask_offset(), port, long_mode_);
}
bool SharedInfo::TestAndClearMask(uint32_t port) {
  if (port >= port_limit()) return false;
  return SharedWords::TestAndClearBit(page() + mask_offset(), port, long_mode_);
}
bool SharedInfo::TestAndSetMask(uint32_t port) {
  if (port >= port_limit()) return false;
  return SharedWords::TestAndSetBit(page() + mask_offset(), port, long_mode_);
}

uint8_t* SharedInfo::DefaultVcpuInfo(uint32_t vcpu) {
  return vcpu < kMaxLegacyVcpus ? page() + vcpu * kVcpuInfoSize : nullptr;
}

void SharedInfo::WriteWallclock(uint64_t seconds, uint32_t nanoseconds) {
  // 64-bit: wc_version 0xc00, wc_sec 0xc04, wc_nsec 0xc08, wc_sec_hi 0xc0c; 32-bit: from 0x900, with
  // wc_sec_hi in arch_shared_info (not written: 32-bit time until 2106).
  uint8_t* wc = page() + (long_mode_ ? 0xc00 : 0x900);
  auto version = Word<uint32_t>(wc, 0);
  const uint32_t odd = version.load() | 1;  // odd while being updated, whatever the page held
  version.store(odd);
  Word<uint32_t>(wc, 1).store(static_cast<uint32_t>(seconds));
  Word<uint32_t>(wc, 2).store(nanoseconds);
  if (long_mode_) Word<uint32_t>(wc, 3).store(static_cast<uint32_t>(seconds >> 32));
  version.store(odd + 1);
}

bool VcpuInfo::TestAndSetPendingSelector(uint32_t word) {
  return SharedWords::TestAndSetBit(host_ + (long_mode_ ? kPendingSel64 : kPendingSel32), word, long_mode_);
}

bool VcpuInfo::TestAndSetUpcallPending() {
  return std::atomic_ref<uint8_t>(host_[kUpcallPending]).exchange(1) != 0;
}

bool VcpuInfo::upcall_pending() const { return std::atomic_ref<uint8_t>(host_[kUpcallPending]).load() != 0; }

void VcpuInfo::WriteTime(const TimeInfo& time) { WriteTimeAt(host_ + kTimeOffset, time); }

void VcpuInfo::WriteTimeAt(uint8_t* info, const TimeInfo& time) {
  auto version = std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(info + kTimeVersion));
  const uint32_t odd = version.load() | 1;  // odd while the fields change
  version.store(odd);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::memcpy(info + kTscTimestamp, &time.tsc_timestamp, 8);
  std::memcpy(info + kSystemTime, &time.system_time_ns, 8);
  std::memcpy(info + kMul, &time.tsc_to_system_mul, 4);
  std::memcpy(info + kShift, &time.tsc_shift, 1);
  info[kFlags] = kPvclockTscStable;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  version.store(odd + 1);
}

}  // namespace xenkvm::xen
