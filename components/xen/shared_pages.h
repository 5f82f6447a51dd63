// shared_info and every vCPU's vcpu_info, as one guarded unit: where the pages are, their layout
// (64- or 32-bit), and the event bits and pvclock data in them. The pages move (add_to_physmap,
// VCPUOP_register_vcpu_info) while other threads raise events in them, so every access goes through
// this class's lock, a leaf: nothing is called under it but the accelerator's guest-atomics
// exclusion (emu), which is taken inside it around each read-modify-write the guest races with.
#ifndef XENKVM_COMPONENTS_XEN_SHARED_PAGES_H_
#define XENKVM_COMPONENTS_XEN_SHARED_PAGES_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/xen/shared_info.h"

namespace xenkvm::xen {

class SharedPages {
 public:
  SharedPages(accel::Accelerator& accelerator, uint32_t vcpus);

  bool long_mode() const;
  // Sets the layout; true if it changed (the caller closes the ports it no longer holds).
  bool SetLongMode(bool long_mode);
  // Ports the layout holds: 4096 (64-bit) or 1024 (32-bit).
  uint32_t port_limit() const;

  // shared_info now lives at `host` (guest frame `gpa`), its contents carried over.
  void PlaceSharedInfo(uint8_t* host, uint64_t gpa);
  std::optional<uint64_t> shared_info_gpa() const;
  // VCPUOP_register_vcpu_info: the vCPU's vcpu_info moves to `host` with its contents, and every
  // selector and upcall_pending are set so that the guest rescans (as Xen). False if it was placed
  // before (once per vCPU, as Xen).
  bool PlaceVcpuInfo(uint32_t vcpu, uint8_t* host, uint64_t gpa);
  // Where the vCPU's vcpu_info is, for the kernel: registered, or its slot in a placed shared_info.
  std::optional<uint64_t> VcpuInfoGpa(uint32_t vcpu) const;

  // 2-level event bits.
  bool IsPending(uint32_t port) const;
  bool IsMasked(uint32_t port) const;
  bool TestAndSetPending(uint32_t port);
  bool TestAndClearPending(uint32_t port);
  // A port given out again starts clean: neither pending nor masked (as Xen).
  void ClearPendingAndMask(uint32_t port);
  // Clears the mask; true if the port was masked and is pending (an event to deliver now).
  bool UnmaskFindsPending(uint32_t port);

  enum class Raised {
    kAlreadyPending,   // nothing new to tell
    kMasked,           // pending now, but masked: no upcall
    kAlreadyNotified,  // pending; the vCPU's selector or upcall_pending was already set
    kUpcallNeeded,     // pending, and upcall_pending went from 0 to 1: raise the upcall
  };
  // The userspace delivery of `port` to `vcpu`: pending, then (unless masked) selector and
  // upcall_pending, as one step.
  Raised Raise(uint32_t port, uint32_t vcpu);
  // Sets the vCPU's selector for `port` and upcall_pending; true if upcall_pending went 0 to 1.
  bool MarkVcpuPending(uint32_t vcpu, uint32_t port);
  bool UpcallPending(uint32_t vcpu) const;
  // Sets the vCPU's upcall_pending (FIFO: no selectors); true if it went from 0 to 1.
  bool SetUpcallPending(uint32_t vcpu);

  // pvclock into the vCPU's vcpu_info (and `time_area`, a registered vcpu_time area, if given).
  void WriteTime(uint32_t vcpu, const TimeInfo& time, uint8_t* time_area);
  void WriteWallclock(uint64_t seconds, uint32_t nanoseconds);

 private:
  std::optional<VcpuInfo> VcpuInfoLocked(uint32_t vcpu) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool MarkVcpuPendingLocked(uint32_t vcpu, uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  accel::Accelerator& accelerator_;
  mutable absl::Mutex mutex_;
  mutable SharedInfo shared_info_ ABSL_GUARDED_BY(mutex_);
  struct Registered {
    uint8_t* host = nullptr;
    uint64_t gpa = 0;
  };
  std::vector<Registered> vcpu_info_ ABSL_GUARDED_BY(mutex_);  // by vCPU; host nullptr: in shared_info
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SHARED_PAGES_H_
