// The guest's vCPUs as Xen sees them: VCPUOP_* (vcpu_info placement, runstate and vcpu_time
// areas, timers, bring-up of secondary vCPUs), pvclock time and runstate accounting.
#ifndef XENKVM_COMPONENTS_XEN_VCPUS_H_
#define XENKVM_COMPONENTS_XEN_VCPUS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"
#include "components/xen/hypercall_caller.h"
#include "components/xen/shared_info.h"
#include "components/xen/shared_pages.h"
#include "components/xen/system_clock.h"
#include "components/xen/timers.h"
#include "components/xen/upcall.h"

namespace xenkvm::xen {

class Vcpus {
 public:
  Vcpus(uint32_t count, uint64_t tsc_khz, memory::GuestMemory& memory, const SystemClock& clock,
        SharedPages& pages, Upcalls& upcalls, EventDelivery& delivery, Timers& timers);

  uint32_t count() const { return count_; }
  // Records `vcpu` (id < count, once), with its TSC offset; vCPU 0 starts up.
  absl::Status Attach(accel::Vcpu& vcpu, int64_t tsc_offset);
  bool Attached(uint32_t vcpu) const;

  // VCPUOP_*; `caller` makes the call.
  int64_t Op(HypercallCaller& caller, uint64_t command, uint64_t vcpu_id, uint64_t arg);

  // pvclock now, into vcpu_info and the vcpu_time area.
  void UpdateTime(uint32_t vcpu);
  // Once shared_info moves: the kernel learns where each vcpu_info is, and every clock is rewritten.
  void SharedInfoPlaced();
  // SCHEDOP_block/poll: the vCPU's runstate shows it blocked meanwhile.
  void SetBlocked(uint32_t vcpu, bool blocked);
  // VMASST_TYPE_runstate_update_flag.
  void SetRunstateUpdateFlag(bool enabled);

 private:
  struct State {
    accel::Vcpu* vcpu = nullptr;
    int64_t tsc_offset = 0;
    bool vcpu_info_registered = false;
    std::optional<uint64_t> runstate_gpa;
    std::optional<uint64_t> time_area_gpa;
    bool started = false;
    std::optional<accel::PvhEntry> start_context;  // VCPUOP_initialise
    bool blocked = false;
    uint64_t blocked_since_ns = 0;
    uint64_t time_blocked_ns = 0;
  };
  int64_t RegisterVcpuInfo(HypercallCaller& caller, uint32_t target, uint64_t arg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int64_t RegisterArea(HypercallCaller& caller, uint32_t target, uint64_t arg, bool runstate)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int64_t TimerOp(HypercallCaller& caller, uint64_t command, uint32_t target, uint64_t arg);
  int64_t Initialise(HypercallCaller& caller, State& state, uint64_t arg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UpdateTimeLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WriteRunstateLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const uint32_t count_;
  const TimeInfo time_scale_;
  memory::GuestMemory& memory_;
  const SystemClock& clock_;
  SharedPages& pages_;
  Upcalls& upcalls_;
  EventDelivery& delivery_;
  Timers& timers_;
  mutable absl::Mutex mutex_;
  std::vector<State> vcpus_ ABSL_GUARDED_BY(mutex_);
  bool runstate_update_flag_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_VCPUS_H_
