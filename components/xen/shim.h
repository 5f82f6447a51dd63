// The Xen shim: the hypervisor interface a Xen HVM/PVH guest expects, in userspace. A thin facade
// that builds and wires the subsystems, each a file pair with its own lock (QEMU keeps
// xen_evtchn.c, xen_gnttab.c and xen-emu.c apart the same way):
//   dispatcher      hypercall entry, counters, xen_version/memory_op/grant_table_op/hvm_op/
//                   sched_op/console_io handlers (one .cc each)
//   event_channels  the port table, EVTCHNOP_*, backends' side, VIRQs, waiting, per-port statistics
//   vcpus           VCPUOP_*, vcpu_info placement, runstate and time areas, pvclock
//   timers          singleshot/periodic timers and set_timer_op, one thread
//   upcall          the callback route and owed upcalls; EventDelivery, userspace or kernel
//   shared_pages    shared_info and vcpu_info: placement, layout, event bits, time
//   reservation     the frames the guest holds and gave back (memory_op's reservation ops)
//   grant_table     the guest's grant table, for backends
// It reaches the CPU only through components/accel.
//
// Lock order (a thread holding one may take only those after it):
//   Dispatcher's physmap lock -> EventChannels -> Vcpus -> Upcalls -> GrantTable -> the leaves
//   (MemoryReservation, ExtraFrames, SharedPages, Timers) -> the accelerator's guest-atomics
//   exclusion.
// The timer thread holds no lock while it fires a timer (Vcpus, then EventChannels) or retries
// owed upcalls (Upcalls).
#ifndef XENKVM_COMPONENTS_XEN_SHIM_H_
#define XENKVM_COMPONENTS_XEN_SHIM_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "components/accel/accelerator.h"
#include "components/base/event_loop.h"
#include "components/memory/guest_memory.h"
#include "components/xen/config.h"
#include "components/xen/dispatcher.h"
#include "components/xen/event_channels.h"
#include "components/xen/extra_frames.h"
#include "components/xen/grant_table.h"
#include "components/xen/reservation.h"
#include "components/xen/shared_pages.h"
#include "components/xen/system_clock.h"
#include "components/xen/timers.h"
#include "components/xen/upcall.h"
#include "components/xen/vcpus.h"

namespace xenkvm::xen {

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
  uint64_t Hypercall(accel::Vcpu& vcpu, const accel::HypercallExit& call) { return dispatcher_.Hypercall(vcpu, call); }

  // Re-reads vCPU 0's upcall_pending into the GSI callback line (the VMM calls it at the local
  // APIC's EOI, so that a handled upcall lowers the line and a new one keeps it up).
  void RefreshCallbackGsi() { upcalls_.RefreshCallbackGsi(); }

  // The VM is ending: vCPUs blocked in SCHEDOP_block/poll return, timers stop.
  void Stop();

  // The backends' side of event channels (the VMM's PV backends, domain 0), statistics and
  // injection.
  EventChannels& event_channels() { return events_; }
  // The guest's grant table, for backends (Map/Unmap) and the toolstack (SetReservedEntries).
  GrantTable& grant_table() { return grant_table_; }
  // The memory the guest holds and gave back (balloon).
  const MemoryReservation& reservation() const { return reservation_; }

  // HVM parameters the VMM provides (HVM_PARAM_STORE_PFN, _STORE_EVTCHN, _CONSOLE_PFN, _CONSOLE_EVTCHN).
  void SetHvmParam(uint32_t index, uint64_t value) { dispatcher_.SetHvmParam(index, value); }

  ShimStatistics Statistics() const;
  // True when events go through the kernel (kvm's Xen support) rather than the shim's own path.
  bool kernel_delivery() const { return delivery_->in_kernel(); }
  // Xen system time (ns since the VM started), as the guest's pvclock shows it.
  uint64_t SystemTimeNs() const { return clock_.NowNs(); }

 private:
  Shim(const XenConfig& config, memory::GuestMemory& memory, accel::Accelerator& accelerator, Callbacks callbacks,
       base::EventLoop* backend_loop);

  const XenConfig config_;
  accel::Accelerator& accelerator_;
  const SystemClock clock_;
  SharedPages pages_;
  GrantTable grant_table_;
  ExtraFrames extra_frames_;
  MemoryReservation reservation_;
  Timers timers_;
  Upcalls upcalls_;
  const std::unique_ptr<EventDelivery> delivery_;
  Vcpus vcpus_;
  EventChannels events_;
  Dispatcher dispatcher_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SHIM_H_
