#include "components/xen/shim.h"

#include <ctime>

#include "components/base/status.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

std::unique_ptr<EventDelivery> ChooseDelivery(accel::Accelerator& accelerator, SharedPages& pages, Upcalls& upcalls) {
  if (accel::KernelXenEvents* kernel = accelerator.kernel_xen_events()) {
    return CreateKernelDelivery(*kernel, pages, upcalls);
  }
  return CreateUserspaceDelivery(pages, upcalls);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Shim>> Shim::Create(const XenConfig& config, memory::GuestMemory& memory,
                                                   accel::Accelerator& accelerator, Callbacks callbacks,
                                                   base::EventLoop* backend_loop) {
  XENKVM_RETURN_IF_ERROR(Validate(config));
  auto shim = std::unique_ptr<Shim>(new Shim(config, memory, accelerator, std::move(callbacks), backend_loop));
  shim->timers_.Start();
  return shim;
}

Shim::Shim(const XenConfig& config, memory::GuestMemory& memory, accel::Accelerator& accelerator,
           Callbacks callbacks, base::EventLoop* backend_loop)
    : config_(config),
      accelerator_(accelerator),
      pages_(accelerator, config.vcpus),
      grant_table_(memory, config.gnttab_max_frames),
      extra_frames_(memory, accelerator),
      reservation_(memory, MemoryReservation::RamOf(config.memory_map), /*max_pages=*/0),
      timers_(
          clock_, config.vcpus,
          [this](uint32_t vcpu) {
            vcpus_.UpdateTime(vcpu);
            events_.SendVirq(vcpu, VIRQ_TIMER);
          },
          [this] { return upcalls_.RetryAllOwed(); }),
      upcalls_(pages_, config.vcpus, accelerator.kernel_xen_events() != nullptr, std::move(callbacks.set_gsi),
               [this] { timers_.Wake(); }),
      delivery_(ChooseDelivery(accelerator, pages_, upcalls_)),
      vcpus_(config.vcpus, accelerator.tsc_khz(), memory, clock_, pages_, upcalls_, *delivery_, timers_),
      events_(config_, clock_, memory, accelerator, pages_, *delivery_, upcalls_, vcpus_, backend_loop),
      dispatcher_(config_, memory,
                  Subsystems{pages_, upcalls_, *delivery_, timers_, vcpus_, events_, grant_table_, extra_frames_, reservation_},
                  std::move(callbacks.console), std::move(callbacks.shutdown)) {
  grant_table_.SynchronizeWith(accelerator);
  grant_table_.TrackPinsIn(reservation_);
  // Wallclock at system time 0: now, less the time since the start.
  timespec real{};
  clock_gettime(CLOCK_REALTIME, &real);
  pages_.WriteWallclock(static_cast<uint64_t>(real.tv_sec), static_cast<uint32_t>(real.tv_nsec));
}

Shim::~Shim() {
  Stop();
  timers_.Join();  // before the subsystems its thread reaches go
}

absl::Status Shim::AttachVcpu(accel::Vcpu& vcpu) {
  XENKVM_ASSIGN_OR_RETURN(int64_t tsc_offset, vcpu.TscOffset());
  XENKVM_RETURN_IF_ERROR(vcpu.SetCpuid(CpuidLeaves(config_, vcpu.id(), accelerator_.tsc_khz())));
  return vcpus_.Attach(vcpu, tsc_offset);
}

absl::Status Shim::EnableHypercallPage() { return accelerator_.EnableHypercallPage(HypercallMsr(config_)); }

void Shim::Stop() {
  events_.Stop();
  timers_.Stop();
}

ShimStatistics Shim::Statistics() const {
  ShimStatistics stats;
  const HypercallCounters counters = dispatcher_.counters();
  stats.hypercalls = counters.by_number;
  stats.unknown_hypercalls = counters.unknown;
  stats.refused_cpl = counters.refused_cpl;
  stats.ports = events_.Snapshot();
  return stats;
}

}  // namespace xenkvm::xen
