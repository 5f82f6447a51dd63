// How a raised event reaches a vCPU.
//
// `Upcalls` is the route the guest chose (HVM_PARAM_CALLBACK_IRQ: the HVM-wide vector, a GSI, PCI
// INTx; or a per-vCPU vector from HVMOP_set_evtchn_upcall_vector) and the raising of an upcall on
// it. An upcall the vCPU cannot take yet (kvm: its local APIC not enabled, as Linux registers
// vcpu_info before that) is owed, not lost: Xen delivers whenever upcall_pending is set, so it is
// raised again at the vCPU's hypercalls and by the timer thread while upcall_pending stays set.
//
// `EventDelivery` is one interface with two implementations: the shim's own (userspace: the bits
// in SharedPages, then an upcall through Upcalls) and the kernel's (kvm's Xen event support:
// EVTCHN_SEND, routes for the guest's own sends, the pages and vectors registered with the kernel;
// the userspace path wherever the kernel refuses).
#ifndef XENKVM_COMPONENTS_XEN_UPCALL_H_
#define XENKVM_COMPONENTS_XEN_UPCALL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/xen/shared_pages.h"

namespace xenkvm::xen {

class Upcalls {
 public:
  // `set_gsi` drives a GSI (unset: GSI callbacks are refused); `owed` is told when an upcall
  // becomes owed (the timer thread then retries it). `kernel_injects_vector`: kvm's Xen support
  // injects the HVM-wide vector itself while upcall_pending is set.
  Upcalls(SharedPages& pages, uint32_t vcpus, bool kernel_injects_vector,
          std::function<void(uint32_t gsi, bool asserted)> set_gsi, std::function<void()> owed);

  void Attach(uint32_t vcpu, accel::Vcpu* accel_vcpu);
  bool gsi_available() const { return static_cast<bool>(set_gsi_); }

  // HVM_PARAM_CALLBACK_IRQ (validated by the caller).
  void SetCallbackVia(uint64_t via);
  uint64_t callback_via() const;
  void SetVcpuVector(uint32_t vcpu, uint8_t vector);

  // Raises the vCPU's upcall on its route (the edge of its upcall_pending).
  void Raise(uint32_t vcpu);
  // Xen's callback is level-triggered; xenkvm injects on edges, so when the route changes, vCPUs
  // whose upcall_pending is already set get one.
  void RaiseAllPending();
  // Raises owed upcalls again while upcall_pending is still set; true if any is still owed.
  bool RetryOwed(uint32_t vcpu);
  bool RetryAllOwed();
  // Re-reads vCPU 0's upcall_pending into the GSI line (at the local APIC's EOI).
  void RefreshCallbackGsi();
  // The kernel set `vcpu`'s upcall_pending: a GSI route is the VMM's line, raise it.
  void AssertGsiAfterKernelSend(uint32_t vcpu);

 private:
  struct VcpuRoute {
    accel::Vcpu* vcpu = nullptr;
    uint8_t vector = 0;  // per-vCPU vector; 0: the HVM-wide route
    bool owed = false;
  };
  void RaiseLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool RetryOwedLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool GsiRouteLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  SharedPages& pages_;
  const bool kernel_injects_vector_;
  const std::function<void(uint32_t, bool)> set_gsi_;
  const std::function<void()> owed_;
  mutable absl::Mutex mutex_;
  std::vector<VcpuRoute> vcpus_ ABSL_GUARDED_BY(mutex_);
  uint64_t callback_via_ ABSL_GUARDED_BY(mutex_) = 0;
  bool intx_warned_ ABSL_GUARDED_BY(mutex_) = false;
  // Set with any owed upcall (under the lock), cleared when none is left: every hypercall checks
  // it without the lock.
  std::atomic<bool> any_owed_{false};
};

// What one raise did, for the port's counters.
struct RaiseOutcome {
  bool newly_pending = false;  // its pending bit went from 0 to 1
  bool masked = false;         // ... while masked: nothing raised
  bool upcall = false;         // an upcall was raised because of it
};

// The guest's own sends on a port, handled in the kernel: they raise `to_port` on `to_vcpu`.
struct SendRoute {
  bool ipi = false;
  uint32_t to_port = 0;
  uint32_t to_vcpu = 0;
};

class EventDelivery {
 public:
  virtual ~EventDelivery() = default;
  virtual bool in_kernel() const = 0;
  // `port`, bound to `vcpu`, is raised.
  virtual RaiseOutcome Raise(uint32_t port, uint32_t vcpu) = 0;
  // The guest unmasked `port`, pending since it arrived while masked: delivered now.
  virtual RaiseOutcome DeliverUnmasked(uint32_t port, uint32_t vcpu) = 0;
  // The kernel's view of the guest's state (nothing to do for the userspace path).
  virtual void RouteSends(uint32_t port, std::optional<SendRoute> route) = 0;  // nullopt: the shim's
  virtual void ResetRoutes() = 0;
  virtual void SetTimerPort(uint32_t vcpu, uint32_t port) = 0;  // 0: the VMM's timer
  virtual void LongModeLatched(bool long_mode) = 0;
  virtual void SharedInfoPlaced(uint64_t gfn) = 0;
  virtual void VcpuInfoPlaced(uint32_t vcpu) = 0;
  virtual void CallbackRouteChanged(uint64_t via) = 0;
  virtual void VcpuVectorChanged(uint32_t vcpu, uint8_t vector) = 0;
};

// The shim's own delivery.
std::unique_ptr<EventDelivery> CreateUserspaceDelivery(SharedPages& pages, Upcalls& upcalls);
// Through `kernel` (kvm's Xen event support), the userspace path where it refuses.
std::unique_ptr<EventDelivery> CreateKernelDelivery(accel::KernelXenEvents& kernel, SharedPages& pages,
                                                    Upcalls& upcalls);

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_UPCALL_H_
