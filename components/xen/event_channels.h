// Event channels: the guest's port table, EVTCHNOP_*, the backends' side (domain 0), VIRQs,
// SCHEDOP_block/poll's waiting, and per-port statistics. 2-level until the guest's first
// EVTCHNOP_init_control switches it to FIFO (fifo_events.h), EVTCHNOP_reset back. Under 2-level,
// raising a port goes through an EventDelivery (the shim's own path, or the kernel's); under FIFO
// through the shim's own FIFO queues and Upcalls (kvm's Xen support knows 2-level only). Its lock comes before Vcpus', Upcalls' and
// SharedPages' (it calls them under it), never after.
#ifndef XENKVM_COMPONENTS_XEN_EVENT_CHANNELS_H_
#define XENKVM_COMPONENTS_XEN_EVENT_CHANNELS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "components/base/event_loop.h"
#include "components/xen/config.h"
#include "components/xen/fifo_events.h"
#include "components/xen/hypercall_caller.h"
#include "components/xen/shared_pages.h"
#include "components/xen/system_clock.h"
#include "components/xen/upcall.h"
#include "components/xen/vcpus.h"

namespace xenkvm::xen {

enum class PortType { kClosed, kUnbound, kInterdomain, kPirq, kVirq, kIpi };  // EVTCHNSTAT_* order
const char* PortTypeName(PortType type);

// Per-port counters (QEMU's xen-event-list has none).
struct PortCounters {
  uint64_t sends = 0;         // EVTCHNOP_send on this port (or a backend's/injection's notify)
  uint64_t deliveries = 0;    // times its pending bit went from 0 to 1
  uint64_t upcalls = 0;       // upcalls raised because of it
  uint64_t masked = 0;        // deliveries that raised nothing because the port was masked
};

struct PortSnapshot {
  uint32_t port = 0;
  PortType type = PortType::kClosed;
  uint32_t vcpu = 0;
  std::string remote;         // "backend", "loopback", or "" (unbound to a domain: its id)
  uint16_t remote_domain = 0;
  uint32_t target = 0;        // remote port, VIRQ or PIRQ number
  bool pending = false;
  bool masked = false;
  PortCounters counters;
};

class EventChannels {
 public:
  using EventHandler = std::function<void()>;

  // `backend_loop` runs backend event handlers (nullptr: on the thread that raised them).
  EventChannels(const XenConfig& config, const SystemClock& clock, memory::GuestMemory& memory,
                accel::Accelerator& accelerator, SharedPages& pages, EventDelivery& delivery, Upcalls& upcalls,
                Vcpus& vcpus, base::EventLoop* backend_loop);

  // EVTCHNOP_*.
  int64_t Op(HypercallCaller& caller, uint64_t command, uint64_t arg);

  // The guest's mode fixes shared_info's layout (Xen latches it the same way): ports the new
  // layout cannot hold are closed.
  void LatchLongMode(bool long_mode);
  bool long_mode_latched() const;
  bool ValidPort(uint32_t port) const;

  // Blocks `vcpu` until one of `ports` is pending (none: any event for it, its upcall_pending),
  // an event it can take arrives (`interrupts_enabled`), the deadline (system time) passes, or
  // Stop(). Its runstate shows it blocked meanwhile.
  void WaitForEvents(uint32_t vcpu, const std::vector<uint32_t>& ports, std::optional<uint64_t> deadline_ns,
                     bool interrupts_enabled);
  // Raises the port bound to `virq` on `vcpu` (global VIRQs: vCPU 0's), if any.
  void SendVirq(uint32_t vcpu, uint32_t virq);
  // Waiters return; nothing blocks again.
  void Stop();

  // ---- Backend side (the VMM's PV backends, domain 0)
  // A new guest port bound to a backend (as a toolstack makes the XenStore and console ports);
  // guest sends on it run `handler`.
  absl::StatusOr<uint32_t> AllocateBackendPort(EventHandler handler);
  // Where a backend's handler runs.
  enum class HandlerThread {
    kBackendLoop,  // posted to the backend loop (any work)
    // At once on the sending vCPU's thread, after this object's lock is released: for a handler
    // that wakes its backend's own thread (an eventfd write) or does a little of its work there
    // (xen-disk's small cached reads), saving the loop's wake-up on every kick. It may notify
    // the guest (NotifyGuest); the vCPU waits for it, so it must not block for long, nor unbind
    // its own port.
    kSender,
  };
  // Binds a port the guest allocated with EVTCHNOP_alloc_unbound(remote_dom = 0). Once
  // UnbindBackend returned, `handler` is not running and never runs again (it waits for a run
  // on a sender's thread in progress, even if the guest closed the port meanwhile).
  absl::Status BindBackend(uint32_t guest_port, EventHandler handler,
                           HandlerThread thread = HandlerThread::kBackendLoop);
  // The backend closes its end: the guest port becomes unbound again (remote domain 0).
  absl::Status UnbindBackend(uint32_t guest_port);
  // Raises `guest_port` in the guest.
  absl::Status NotifyGuest(uint32_t guest_port);

  // ---- Statistics and debugging
  std::vector<PortSnapshot> Snapshot() const;  // every open port, by number
  // Raises `port` as if its remote end had sent (QEMU's xen-event-inject): kInvalidArgument for a
  // port outside the ABI's range, kNotFound for a closed one.
  absl::Status InjectEvent(uint32_t port);

 private:
  // A backend's handler, shared by its port and the runs in progress.
  struct BackendHandler {
    BackendHandler(EventHandler run, HandlerThread thread) : run(std::move(run)), thread(thread) {}
    const EventHandler run;
    const HandlerThread thread;
    uint32_t sender_runs = 0;       // runs on senders' threads in progress (under mutex_)
    std::atomic<bool> bound{true};  // false once unbound: a run posted before is dropped
  };

  struct Port {
    PortType type = PortType::kClosed;
    uint32_t vcpu = 0;
    uint16_t remote_domain = 0;  // unbound/interdomain: the other side's domain
    uint32_t remote_port = 0;    // interdomain loopback: the peer port
    bool backend = false;        // interdomain with a VMM backend
    uint32_t virq = 0;
    std::shared_ptr<BackendHandler> handler;
    PortCounters counters;
  };

  int64_t AllocUnbound(HypercallCaller& caller, uint64_t arg);
  int64_t BindInterdomain(HypercallCaller& caller, uint64_t arg);
  int64_t BindVirq(HypercallCaller& caller, uint64_t arg);
  int64_t BindIpi(HypercallCaller& caller, uint64_t arg);
  int64_t Status(HypercallCaller& caller, uint64_t arg);
  int64_t BindVcpu(HypercallCaller& caller, uint64_t arg);
  int64_t PortOnlyOp(HypercallCaller& caller, uint64_t command, uint64_t arg);
  int64_t Reset(HypercallCaller& caller, uint64_t arg);
  // FIFO: init_control, expand_array, set_priority.
  int64_t InitControl(HypercallCaller& caller, uint64_t arg);
  int64_t ExpandArray(HypercallCaller& caller, uint64_t arg);
  int64_t SetPriority(HypercallCaller& caller, uint64_t arg);
  bool Self(uint16_t domid) const;

  bool ValidPortLocked(uint32_t port) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint32_t PortLimitLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::optional<uint32_t> AllocatePortLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A port allocated for an op whose answer could not be written back is closed again.
  int64_t AnswerOrCloseLocked(uint32_t port, bool written) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RaiseLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A FIFO raise's outcome: counted, and a newly set READY bit raises the vCPU's upcall.
  void FinishFifoRaiseLocked(uint32_t port, const FifoEvents::Raised& raised) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool IsPendingLocked(uint32_t port) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool IsMaskedLocked(uint32_t port) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Closes the ports the ABI in use cannot hold (a 32-bit layout, or back from FIFO).
  void CloseBeyondLimitLocked(bool backends_too) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void CountLocked(uint32_t port, const RaiseOutcome& outcome) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // EVTCHNOP_send: a handler to run on this thread once the lock is released comes back in
  // `run_here` (counted in its sender_runs).
  int64_t Send(uint32_t port);
  int64_t SendLocked(uint32_t port, std::shared_ptr<BackendHandler>* run_here) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ClosePortLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Lets the kernel handle the guest's sends on `port` (IPIs and loopback), or takes them back.
  void RouteLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Posts a kBackendLoop handler's run to the loop, or hands a sender's run back (SendLocked).
  void RunBackendHandlerLocked(const Port& port, std::shared_ptr<BackendHandler>* run_here)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const XenConfig& config_;
  const SystemClock& clock_;
  SharedPages& pages_;
  EventDelivery& delivery_;
  Upcalls& upcalls_;
  Vcpus& vcpus_;
  base::EventLoop* const backend_loop_;

  mutable absl::Mutex mutex_;
  std::vector<Port> ports_ ABSL_GUARDED_BY(mutex_);
  // BindBackend's handlers by port until UnbindBackend, kept when the guest closes the port, so
  // that UnbindBackend still waits for a run in progress.
  absl::flat_hash_map<uint32_t, std::shared_ptr<BackendHandler>> bindings_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::array<uint32_t, 24>> virq_ports_ ABSL_GUARDED_BY(mutex_);  // by vCPU; NR_VIRQS
  FifoEvents fifo_ ABSL_GUARDED_BY(mutex_);
  // The layout, as latched into SharedPages (kept here too: every port check needs it).
  bool long_mode_ ABSL_GUARDED_BY(mutex_) = true;
  std::atomic<bool> long_mode_latched_{false};  // read on every hypercall, without the lock
  uint64_t event_generation_ ABSL_GUARDED_BY(mutex_) = 0;  // bumped on every raise: wakes waiters
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_EVENT_CHANNELS_H_
