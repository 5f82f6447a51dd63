// The Xen shim: the hypervisor interface a Xen HVM/PVH guest expects, in userspace. It answers the
// guest's hypercalls (on the calling vCPU's thread), keeps shared_info/vcpu_info, event channels
// (2-level ABI) and the guest's timers, raises upcalls through the accelerator, and gives VMM
// backends their side of event channels. It reaches the CPU only through components/accel.
//
// Every hypercall argument is hostile: structures are copied once from guest memory (translated
// through the caller's page tables) and checked; a bad value earns the guest Xen's error code.
#ifndef XENKVM_COMPONENTS_XEN_SHIM_H_
#define XENKVM_COMPONENTS_XEN_SHIM_H_

#include <array>
#include <bitset>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/base/event_loop.h"
#include "components/memory/guest_memory.h"
#include "components/xen/config.h"
#include "components/xen/extra_frames.h"
#include "components/xen/grant_table.h"
#include "components/xen/shared_info.h"

namespace xenkvm::xen {

class GuestAccess;

enum class ShutdownReason { kPoweroff, kReboot, kCrash, kWatchdog, kSoftReset };
const char* ShutdownReasonName(ShutdownReason reason);

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

struct ShimStatistics {
  std::vector<PortSnapshot> ports;  // every open port, by number
  std::array<uint64_t, 64> hypercalls{};  // by hypercall number
  uint64_t unknown_hypercalls = 0;  // numbers Xen does not define or xenkvm does not implement
  uint64_t refused_cpl = 0;         // from user space (CPL > 0): -EPERM
};

class Shim {
 public:
  struct Callbacks {
    std::function<void(uint8_t)> console;  // CONSOLEIO_write bytes
    std::function<void(ShutdownReason)> shutdown;
    // Drives a GSI (HVM_PARAM_CALLBACK_IRQ of the GSI type): asserted while vCPU 0's upcall is
    // pending. Unset: GSI callbacks are refused.
    std::function<void(uint32_t gsi, bool asserted)> set_gsi;
  };

  // `backend_loop` runs backend event handlers (nullptr: they run on the thread that raised them).
  // `memory`, `accelerator` and `backend_loop` must outlive the shim.
  static absl::StatusOr<std::unique_ptr<Shim>> Create(const XenConfig& config, memory::GuestMemory& memory,
                                                      accel::Accelerator& accelerator, Callbacks callbacks,
                                                      base::EventLoop* backend_loop = nullptr);
  ~Shim();

  // Shows Xen to the vCPU (CPUID leaves) and records it; each vCPU once, ids 0..vcpus-1, before it runs.
  absl::Status AttachVcpu(accel::Vcpu& vcpu);
  // Turns on the hypercall page (the guest's MSR write fills it). Once, after creation.
  absl::Status EnableHypercallPage();

  // Answers `vcpu`'s hypercall exit, on its run-loop thread; give the result to Complete().
  uint64_t Hypercall(accel::Vcpu& vcpu, const accel::HypercallExit& call);

  // Re-reads vCPU 0's upcall_pending into the GSI callback line (the VMM calls it at the local
  // APIC's EOI, so that a handled upcall lowers the line and a new one keeps it up).
  void RefreshCallbackGsi();

  // The VM is ending: vCPUs blocked in SCHEDOP_block/poll return, timers stop.
  void Stop();

  // ---- Backend side (the VMM's PV backends, domain 0)
  using EventHandler = std::function<void()>;
  // A new guest port bound to a backend (as a toolstack makes the XenStore and console ports);
  // guest sends on it run `handler`.
  absl::StatusOr<uint32_t> AllocateBackendPort(EventHandler handler);
  // Binds a port the guest allocated with EVTCHNOP_alloc_unbound(remote_dom = 0).
  absl::Status BindBackend(uint32_t guest_port, EventHandler handler);
  // The backend closes its end: the guest port becomes unbound again (remote domain 0).
  absl::Status UnbindBackend(uint32_t guest_port);
  // Raises `guest_port` in the guest.
  absl::Status NotifyGuest(uint32_t guest_port);

  // The guest's grant table, for backends (Map/Unmap) and the toolstack (SetReservedEntries).
  GrantTable& grant_table() { return grant_table_; }

  // HVM parameters the VMM provides (HVM_PARAM_STORE_PFN, _STORE_EVTCHN, _CONSOLE_PFN, _CONSOLE_EVTCHN).
  void SetHvmParam(uint32_t index, uint64_t value);

  // ---- Statistics and debugging
  ShimStatistics Statistics() const;
  // True when events go through the kernel (kvm's Xen support) rather than the shim's own path.
  bool kernel_delivery() const { return kernel_ != nullptr; }
  // Raises `port` as if its remote end had sent (QEMU's xen-event-inject): kInvalidArgument for a
  // port outside the ABI's range, kNotFound for a closed one.
  absl::Status InjectEvent(uint32_t port);

  // Xen system time (ns since the VM started), as the guest's pvclock shows it.
  uint64_t SystemTimeNs() const;

 private:
  struct Port {
    PortType type = PortType::kClosed;
    uint32_t vcpu = 0;
    uint16_t remote_domain = 0;  // unbound/interdomain: the other side's domain
    uint32_t remote_port = 0;    // interdomain loopback: the peer port
    bool backend = false;        // interdomain with a VMM backend
    uint32_t virq = 0;
    std::shared_ptr<EventHandler> handler;
    PortCounters counters;
  };
  struct VcpuState {
    accel::Vcpu* vcpu = nullptr;
    int64_t tsc_offset = 0;
    uint8_t* vcpu_info = nullptr;  // registered (VCPUOP_register_vcpu_info); nullptr: in shared_info
    uint64_t vcpu_info_gpa = 0;
    uint8_t upcall_vector = 0;     // HVMOP_set_evtchn_upcall_vector
    std::optional<uint64_t> runstate_gpa;
    std::optional<uint64_t> time_area_gpa;
    std::array<uint32_t, 24> virq_ports{};  // NR_VIRQS; global VIRQs live in vCPU 0's table
    std::optional<uint64_t> singleshot_ns;  // deadline, system time
    uint64_t periodic_ns = 0;               // 0: off
    uint64_t periodic_next_ns = 0;
    bool started = false;
    std::optional<accel::PvhEntry> start_context;  // VCPUOP_initialise
    bool blocked = false;
    uint64_t blocked_since_ns = 0;
    uint64_t time_blocked_ns = 0;
    // An upcall the vCPU could not take (its local APIC not enabled yet): Xen delivers while
    // upcall_pending is set, so it is retried at the vCPU's hypercalls and by the timer thread.
    bool upcall_owed = false;
  };
  struct Caller;

  Shim(const XenConfig& config, memory::GuestMemory& memory, accel::Accelerator& accelerator,
       Callbacks callbacks, base::EventLoop* backend_loop);

  int64_t Dispatch(Caller& caller, uint64_t number, const std::array<uint64_t, 6>& args);
  int64_t XenVersion(Caller& caller, uint64_t command, uint64_t arg);
  int64_t MemoryOp(Caller& caller, uint64_t command, uint64_t arg);
  int64_t MemoryMap(Caller& caller, uint64_t arg);
  int64_t HvmOp(Caller& caller, uint64_t command, uint64_t arg);
  int64_t VcpuOp(Caller& caller, uint64_t command, uint64_t vcpu_id, uint64_t arg);
  int64_t SchedOp(Caller& caller, uint64_t command, uint64_t arg);
  int64_t SetTimerOp(Caller& caller, uint64_t timeout_ns);
  int64_t ConsoleIo(Caller& caller, uint64_t command, uint64_t count, uint64_t buffer);
  int64_t EventChannelOp(Caller& caller, uint64_t command, uint64_t arg);
  int64_t GrantTableOp(Caller& caller, uint64_t command, uint64_t arg, uint64_t count);
  int64_t VmAssist(uint64_t command, uint64_t type);
  int64_t AddToPhysmap(Caller& caller, uint16_t domid, uint32_t space, uint64_t index, uint64_t gpfn);
  void ReleaseUnusedFrames() ABSL_EXCLUSIVE_LOCKS_REQUIRED(physmap_mutex_);
  int64_t WaitForEvents(Caller& caller, const std::vector<uint32_t>& ports, std::optional<uint64_t> deadline_ns);

  // Event-channel mechanics (mutex_ held).
  bool ValidPortLocked(uint32_t port) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint32_t PortLimitLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::optional<uint32_t> AllocatePortLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void SetPendingLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void MarkVcpuPendingLocked(uint32_t vcpu, uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RaiseUpcallLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RaisePendingUpcallsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Raises an owed upcall again while upcall_pending is still set; returns whether one is still owed.
  bool RetryOwedUpcallLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // With kernel delivery: hands `port` to the kernel; false if it refused (use the userspace path).
  bool KernelSendLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void KernelSetVcpuInfoLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void KernelSetUpcallRouteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // With kernel delivery: lets the kernel handle the guest's sends on `port` (IPIs and loopback),
  // or takes them back (any other state).
  void KernelRouteLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  int64_t SendLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void ClosePortLocked(uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void SendVirqLocked(uint32_t vcpu, uint32_t virq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::optional<VcpuInfo> VcpuInfoLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void LatchLongModeLocked(bool long_mode) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void UpdateTimeLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WriteRunstateLocked(uint32_t vcpu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RunBackendHandler(const std::shared_ptr<EventHandler>& handler);

  void TimerLoop();

  const XenConfig config_;
  memory::GuestMemory& memory_;
  accel::Accelerator& accelerator_;
  const Callbacks callbacks_;
  base::EventLoop* const backend_loop_;
  // The kernel's event delivery (kvm with EVTCHN_SEND), or nullptr: the userspace path.
  accel::KernelXenEvents* const kernel_;
  const uint64_t start_monotonic_ns_;
  const uint64_t tsc_khz_;
  const TimeInfo time_scale_;
  GrantTable grant_table_;
  // Placing frames (add_to_physmap) is serialized; taken before mutex_ and the grant table's.
  absl::Mutex physmap_mutex_;
  ExtraFrames extra_frames_;

  mutable absl::Mutex mutex_;
  SharedInfo shared_info_ ABSL_GUARDED_BY(mutex_);
  bool long_mode_latched_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<VcpuState> vcpus_ ABSL_GUARDED_BY(mutex_);
  std::vector<Port> ports_ ABSL_GUARDED_BY(mutex_);
  uint64_t callback_via_ ABSL_GUARDED_BY(mutex_) = 0;  // HVM_PARAM_CALLBACK_IRQ
  absl::flat_hash_map<uint32_t, uint64_t> hvm_params_ ABSL_GUARDED_BY(mutex_);
  std::array<uint64_t, 64> hypercall_counts_ ABSL_GUARDED_BY(mutex_){};
  uint64_t unknown_hypercalls_ ABSL_GUARDED_BY(mutex_) = 0;
  std::bitset<64> unknown_logged_ ABSL_GUARDED_BY(mutex_);  // hypercall numbers named in the log once
  uint64_t vm_assist_ ABSL_GUARDED_BY(mutex_) = 0;          // VMASST_TYPE_* bits enabled
  uint64_t refused_cpl_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t event_generation_ ABSL_GUARDED_BY(mutex_) = 0;  // bumped on every delivery: wakes pollers
  bool timers_changed_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool gsi_callback_warned_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread timer_thread_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SHIM_H_
