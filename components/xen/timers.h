// The guest's timers: per vCPU a singleshot (VCPUOP_set_singleshot_timer, set_timer_op) and a
// periodic timer (VCPUOP_set_periodic_timer), fired by one thread as VIRQ_TIMER. The same thread
// retries owed upcalls every millisecond while any is owed. Its lock is a leaf: the thread calls
// out (fire, retry) without it.
#ifndef XENKVM_COMPONENTS_XEN_TIMERS_H_
#define XENKVM_COMPONENTS_XEN_TIMERS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/xen/system_clock.h"

namespace xenkvm::xen {

class Timers {
 public:
  // `fire(vcpu)`: the vCPU's timer expired. `retry_owed()`: retries owed upcalls; true while any
  // is still owed.
  Timers(const SystemClock& clock, uint32_t vcpus, std::function<void(uint32_t vcpu)> fire,
         std::function<bool()> retry_owed);
  ~Timers();  // stops and joins the thread

  // Starts the thread (once everything `fire` reaches exists).
  void Start();
  // Asks the thread to end (it may be firing a timer still); Join() waits for it.
  void Stop();
  // Stop() and wait: no timer fires after this returns. Not from `fire` itself.
  void Join();

  // Deadlines in system time; nullopt stops the singleshot timer.
  void SetSingleshot(uint32_t vcpu, std::optional<uint64_t> deadline_ns);
  // set_timer_op: 0 stops; a deadline Xen would not honour (negative or absurdly far) fires in
  // 100 ms, as Xen and QEMU do (Linux once passed garbage here).
  void SetTimerOp(uint32_t vcpu, uint64_t timeout_ns);
  // Every `period_ns` from now; 0 stops.
  void SetPeriodic(uint32_t vcpu, uint64_t period_ns);
  // An upcall became owed: retry soon.
  void Wake();

 private:
  struct VcpuTimers {
    std::optional<uint64_t> singleshot_ns;
    uint64_t periodic_ns = 0;  // 0: off
    uint64_t periodic_next_ns = 0;
  };
  void Loop();
  // The vCPUs whose timer is due at `now`, their deadlines moved on.
  std::vector<uint32_t> TakeDueLocked(uint64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const SystemClock& clock_;
  const std::function<void(uint32_t)> fire_;
  const std::function<bool()> retry_owed_;
  absl::Mutex mutex_;
  std::vector<VcpuTimers> vcpus_ ABSL_GUARDED_BY(mutex_);
  bool changed_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_TIMERS_H_
