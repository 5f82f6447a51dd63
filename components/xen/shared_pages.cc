#include "components/xen/shared_pages.h"

#include <cstring>
#include <memory>

#include "components/xen/config.h"

namespace xenkvm::xen {

SharedPages::SharedPages(accel::Accelerator& accelerator, uint32_t vcpus)
    : accelerator_(accelerator), vcpu_info_(vcpus) {}

bool SharedPages::long_mode() const {
  absl::MutexLock lock(&mutex_);
  return shared_info_.long_mode();
}

bool SharedPages::SetLongMode(bool long_mode) {
  absl::MutexLock lock(&mutex_);
  if (shared_info_.long_mode() == long_mode) return false;
  shared_info_.set_long_mode(long_mode);
  return true;
}

uint32_t SharedPages::port_limit() const {
  absl::MutexLock lock(&mutex_);
  return shared_info_.port_limit();
}

void SharedPages::PlaceSharedInfo(uint8_t* host, uint64_t gpa) {
  absl::MutexLock lock(&mutex_);
  shared_info_.MapAt(host, gpa);
}

std::optional<uint64_t> SharedPages::shared_info_gpa() const {
  absl::MutexLock lock(&mutex_);
  return shared_info_.gpa();
}

bool SharedPages::PlaceVcpuInfo(uint32_t vcpu, uint8_t* host, uint64_t gpa) {
  absl::MutexLock lock(&mutex_);
  if (vcpu >= vcpu_info_.size() || vcpu_info_[vcpu].host != nullptr) return false;
  if (uint8_t* old = shared_info_.DefaultVcpuInfo(vcpu); old != nullptr) std::memcpy(host, old, kVcpuInfoSize);
  vcpu_info_[vcpu] = Registered{host, gpa};
  VcpuInfo moved(host, shared_info_.long_mode());
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  for (uint32_t word = 0; word < (shared_info_.long_mode() ? 64u : 32u); ++word) moved.TestAndSetPendingSelector(word);
  moved.TestAndSetUpcallPending();
  return true;
}

std::optional<uint64_t> SharedPages::VcpuInfoGpa(uint32_t vcpu) const {
  absl::MutexLock lock(&mutex_);
  if (vcpu >= vcpu_info_.size() || !shared_info_.gpa()) return std::nullopt;
  if (vcpu_info_[vcpu].host != nullptr) return vcpu_info_[vcpu].gpa;
  if (vcpu < kMaxLegacyVcpus) return *shared_info_.gpa() + vcpu * kVcpuInfoSize;
  return std::nullopt;
}

bool SharedPages::IsPending(uint32_t port) const {
  absl::MutexLock lock(&mutex_);
  return shared_info_.IsPending(port);
}

bool SharedPages::IsMasked(uint32_t port) const {
  absl::MutexLock lock(&mutex_);
  return shared_info_.IsMasked(port);
}

bool SharedPages::TestAndSetPending(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  return shared_info_.TestAndSetPending(port);
}

bool SharedPages::TestAndClearPending(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  return shared_info_.TestAndClearPending(port);
}

void SharedPages::ClearPendingAndMask(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  shared_info_.TestAndClearPending(port);
  shared_info_.TestAndClearMask(port);
}

bool SharedPages::UnmaskFindsPending(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  return shared_info_.TestAndClearMask(port) && shared_info_.IsPending(port);
}

// The guest clears these bits with XCHG and LOCK BTR, which emu runs as loads and stores: an event
// set in between would be lost (seen: a disk completion never seen, the guest's I/O hung), hence
// the exclusion around the whole step.
SharedPages::Raised SharedPages::Raise(uint32_t port, uint32_t vcpu) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  if (shared_info_.TestAndSetPending(port)) return Raised::kAlreadyPending;
  if (shared_info_.IsMasked(port)) return Raised::kMasked;
  return MarkVcpuPendingLocked(vcpu, port) ? Raised::kUpcallNeeded : Raised::kAlreadyNotified;
}

bool SharedPages::MarkVcpuPending(uint32_t vcpu, uint32_t port) {
  absl::MutexLock lock(&mutex_);
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  return MarkVcpuPendingLocked(vcpu, port);
}

bool SharedPages::MarkVcpuPendingLocked(uint32_t vcpu, uint32_t port) {
  std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu);
  if (!info) return false;
  const uint32_t word = port / (shared_info_.long_mode() ? 64 : 32);
  if (info->TestAndSetPendingSelector(word)) return false;
  return !info->TestAndSetUpcallPending();
}

bool SharedPages::SetUpcallPending(uint32_t vcpu) {
  absl::MutexLock lock(&mutex_);
  std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu);
  if (!info) return false;
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  return !info->TestAndSetUpcallPending();
}

bool SharedPages::UpcallPending(uint32_t vcpu) const {
  absl::MutexLock lock(&mutex_);
  std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu);
  return info && info->upcall_pending();
}

void SharedPages::WriteTime(uint32_t vcpu, const TimeInfo& time, uint8_t* time_area) {
  absl::MutexLock lock(&mutex_);
  if (std::optional<VcpuInfo> info = VcpuInfoLocked(vcpu)) info->WriteTime(time);
  if (time_area != nullptr) VcpuInfo::WriteTimeAt(time_area, time);
}

void SharedPages::WriteWallclock(uint64_t seconds, uint32_t nanoseconds) {
  absl::MutexLock lock(&mutex_);
  shared_info_.WriteWallclock(seconds, nanoseconds);
}

std::optional<VcpuInfo> SharedPages::VcpuInfoLocked(uint32_t vcpu) const {
  if (vcpu >= vcpu_info_.size()) return std::nullopt;
  uint8_t* host = vcpu_info_[vcpu].host != nullptr ? vcpu_info_[vcpu].host : shared_info_.DefaultVcpuInfo(vcpu);
  if (host == nullptr) return std::nullopt;
  return VcpuInfo(host, shared_info_.long_mode());
}

}  // namespace xenkvm::xen
