#include "components/xen/event_channels.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint32_t kNrVirqs = 24;
constexpr uint16_t kBackendDomain = 0;

bool PerVcpuVirq(uint32_t virq) {
  return virq == VIRQ_TIMER || virq == VIRQ_DEBUG || virq == VIRQ_XENOPROF || virq == VIRQ_XENPMU;
}

}  // namespace

const char* PortTypeName(PortType type) {
  switch (type) {
    case PortType::kClosed:
      return "closed";
    case PortType::kUnbound:
      return "unbound";
    case PortType::kInterdomain:
      return "interdomain";
    case PortType::kPirq:
      return "pirq";
    case PortType::kVirq:
      return "virq";
    case PortType::kIpi:
      return "ipi";
  }
  return "?";
}

EventChannels::EventChannels(const XenConfig& config, const SystemClock& clock, memory::GuestMemory& memory,
                             accel::Accelerator& accelerator, SharedPages& pages, EventDelivery& delivery,
                             Upcalls& upcalls, Vcpus& vcpus, base::EventLoop* backend_loop)
    : config_(config),
      clock_(clock),
      pages_(pages),
      delivery_(delivery),
      upcalls_(upcalls),
      vcpus_(vcpus),
      backend_loop_(backend_loop),
      ports_(kMaxPorts64),
      virq_ports_(vcpus.count()),
      fifo_(memory, accelerator, vcpus.count(), std::min(config.max_event_channels, kMaxPortsFifo)) {}

bool EventChannels::Self(uint16_t domid) const { return domid == DOMID_SELF || domid == config_.domid; }

uint32_t EventChannels::PortLimitLocked() const {
  if (fifo_.active()) return fifo_.max_ports();
  return std::min(config_.max_event_channels, long_mode_ ? kMaxPorts64 : kMaxPorts32);
}

bool EventChannels::IsPendingLocked(uint32_t port) const {
  return fifo_.active() ? fifo_.IsPending(port) : pages_.IsPending(port);
}

bool EventChannels::IsMaskedLocked(uint32_t port) const {
  return fifo_.active() ? fifo_.IsMasked(port) : pages_.IsMasked(port);
}

void EventChannels::CloseBeyondLimitLocked(bool backends_too) {
  for (uint32_t port = PortLimitLocked(); port < ports_.size(); ++port) {
    if (ports_[port].type != PortType::kClosed && (backends_too || !ports_[port].backend)) ClosePortLocked(port);
  }
  ports_.resize(std::max<size_t>(PortLimitLocked(), kMaxPorts64));
}

bool EventChannels::ValidPortLocked(uint32_t port) const { return port != 0 && port < PortLimitLocked(); }

bool EventChannels::ValidPort(uint32_t port) const {
  absl::MutexLock lock(&mutex_);
  return ValidPortLocked(port);
}

std::optional<uint32_t> EventChannels::AllocatePortLocked() {
  for (uint32_t port = 1; port < PortLimitLocked(); ++port) {
    if (ports_[port].type != PortType::kClosed) continue;
    if (fifo_.active()) {
      if (fifo_.IsBusy(port)) continue;  // still linked: the guest has not consumed it (as Xen)
      fifo_.InitPort(port);
    } else {
      pages_.ClearPendingAndMask(port);
    }
    ports_[port] = Port{};
    return port;
  }
  return std::nullopt;
}

void EventChannels::LatchLongMode(bool long_mode) {
  absl::MutexLock lock(&mutex_);
  long_mode_latched_.store(true, std::memory_order_release);
  delivery_.LongModeLatched(long_mode);
  if (!pages_.SetLongMode(long_mode)) return;
  long_mode_ = long_mode;
  if (!fifo_.active()) CloseBeyondLimitLocked(/*backends_too=*/true);
}

bool EventChannels::long_mode_latched() const { return long_mode_latched_.load(std::memory_order_acquire); }

void EventChannels::CountLocked(uint32_t port, const RaiseOutcome& outcome) {
  PortCounters& counters = ports_[port].counters;
  counters.deliveries += outcome.newly_pending;
  counters.masked += outcome.masked;
  counters.upcalls += outcome.upcall;
}

void EventChannels::RaiseLocked(uint32_t port) {
  ++event_generation_;
  if (fifo_.active()) {
    FinishFifoRaiseLocked(port, fifo_.Raise(port, ports_[port].vcpu));
    return;
  }
  CountLocked(port, delivery_.Raise(port, ports_[port].vcpu));
}

void EventChannels::FinishFifoRaiseLocked(uint32_t port, const FifoEvents::Raised& raised) {
  RaiseOutcome outcome{.newly_pending = raised.newly_pending, .masked = raised.masked};
  const uint32_t vcpu = ports_[port].vcpu;
  if (raised.ready && pages_.SetUpcallPending(vcpu)) {
    upcalls_.Raise(vcpu);
    outcome.upcall = true;
  }
  CountLocked(port, outcome);
}

void EventChannels::RunBackendHandlerLocked(const Port& port, std::shared_ptr<BackendHandler>* run_here) {
  const std::shared_ptr<BackendHandler>& handler = port.handler;
  if (!handler) return;
  if (backend_loop_ == nullptr || handler->thread == HandlerThread::kSender) {
    ++handler->sender_runs;  // UnbindBackend waits for it
    *run_here = handler;
    return;
  }
  (void)backend_loop_->Post([handler] {
    if (handler->bound.load(std::memory_order_acquire)) handler->run();
  });
}

int64_t EventChannels::Send(uint32_t port) {
  std::shared_ptr<BackendHandler> run_here;
  int64_t result = 0;
  {
    absl::MutexLock lock(&mutex_);
    if (!ValidPortLocked(port)) return XenError(XEN_EINVAL);
    result = SendLocked(port, &run_here);
  }
  if (run_here) {
    // Outside the lock: the handler may notify the guest, and other vCPUs' event channel
    // operations need not wait for it.
    run_here->run();
    absl::MutexLock lock(&mutex_);  // an UnbindBackend waiting on the count looks again
    --run_here->sender_runs;
  }
  return result;
}

int64_t EventChannels::SendLocked(uint32_t port, std::shared_ptr<BackendHandler>* run_here) {
  Port& p = ports_[port];
  switch (p.type) {
    case PortType::kInterdomain:
      ++p.counters.sends;
      if (p.backend) {
        RunBackendHandlerLocked(p, run_here);
      } else {
        RaiseLocked(p.remote_port);
      }
      return 0;
    case PortType::kIpi:
      ++p.counters.sends;
      RaiseLocked(port);
      return 0;
    case PortType::kUnbound:
      ++p.counters.sends;  // nobody listens yet: dropped, as Xen does
      return 0;
    default:
      return XenError(XEN_EINVAL);
  }
}

void EventChannels::RouteLocked(uint32_t port) {
  if (!delivery_.in_kernel() || fifo_.active() || port == 0 || port >= ports_.size()) return;
  const Port& p = ports_[port];
  if (p.type == PortType::kIpi) {
    delivery_.RouteSends(port, SendRoute{.ipi = true, .to_port = port, .to_vcpu = p.vcpu});
  } else if (p.type == PortType::kInterdomain && !p.backend) {
    delivery_.RouteSends(port, SendRoute{.ipi = false, .to_port = p.remote_port, .to_vcpu = ports_[p.remote_port].vcpu});
  } else {
    delivery_.RouteSends(port, std::nullopt);  // closed, unbound, VIRQ, backend: the shim's
  }
}

void EventChannels::ClosePortLocked(uint32_t port) {
  Port& p = ports_[port];
  uint32_t peer = 0;
  switch (p.type) {
    case PortType::kVirq: {
      const uint32_t owner = PerVcpuVirq(p.virq) ? p.vcpu : 0;
      if (owner < virq_ports_.size() && virq_ports_[owner][p.virq] == port) virq_ports_[owner][p.virq] = 0;
      if (p.virq == VIRQ_TIMER && !fifo_.active()) delivery_.SetTimerPort(p.vcpu, 0);
      break;
    }
    case PortType::kInterdomain:
      if (!p.backend && p.remote_port < ports_.size() && ports_[p.remote_port].type == PortType::kInterdomain) {
        // The loopback peer goes back to waiting for a binding from this domain.
        Port& other = ports_[p.remote_port];
        other.type = PortType::kUnbound;
        other.remote_domain = config_.domid;
        other.remote_port = 0;
        peer = p.remote_port;
      }
      break;
    default:
      break;
  }
  p = Port{};
  fifo_.ClearPending(port);
  RouteLocked(port);
  if (peer != 0) RouteLocked(peer);
}

void EventChannels::SendVirq(uint32_t vcpu, uint32_t virq) {
  absl::MutexLock lock(&mutex_);
  const uint32_t owner = PerVcpuVirq(virq) ? vcpu : 0;
  if (owner >= virq_ports_.size() || virq >= kNrVirqs) return;
  if (const uint32_t port = virq_ports_[owner][virq]; port != 0) RaiseLocked(port);
}

int64_t EventChannels::AnswerOrCloseLocked(uint32_t port, bool written) {
  if (written) return 0;
  ClosePortLocked(port);
  return XenError(XEN_EFAULT);
}

int64_t EventChannels::Op(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case EVTCHNOP_alloc_unbound:
      return AllocUnbound(caller, arg);
    case EVTCHNOP_bind_interdomain:
      return BindInterdomain(caller, arg);
    case EVTCHNOP_bind_virq:
      return BindVirq(caller, arg);
    case EVTCHNOP_bind_ipi:
      return BindIpi(caller, arg);
    case EVTCHNOP_close:
    case EVTCHNOP_send:
    case EVTCHNOP_unmask:
      return PortOnlyOp(caller, command, arg);
    case EVTCHNOP_status:
      return Status(caller, arg);
    case EVTCHNOP_bind_vcpu:
      return BindVcpu(caller, arg);
    case EVTCHNOP_reset:
      return Reset(caller, arg);
    case EVTCHNOP_init_control:
      return InitControl(caller, arg);
    case EVTCHNOP_expand_array:
      return ExpandArray(caller, arg);
    case EVTCHNOP_set_priority:
      return SetPriority(caller, arg);
    default:
      // bind_pirq, reset_cont: not yet.
      return XenError(XEN_ENOSYS);
  }
}

int64_t EventChannels::AllocUnbound(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_alloc_unbound_t> op = caller.access.ReadObject<evtchn_alloc_unbound_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  if (!Self(op->dom)) return XenError(XEN_ESRCH);
  if (!Self(op->remote_dom) && op->remote_dom != kBackendDomain) return XenError(XEN_ESRCH);
  absl::MutexLock lock(&mutex_);
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return XenError(XEN_ENOSPC);
  ports_[*port].type = PortType::kUnbound;
  ports_[*port].remote_domain = Self(op->remote_dom) ? config_.domid : kBackendDomain;
  op->port = *port;
  return AnswerOrCloseLocked(*port, caller.access.WriteObject(arg, *op));
}

int64_t EventChannels::BindInterdomain(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_bind_interdomain_t> op = caller.access.ReadObject<evtchn_bind_interdomain_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  // Loopback within this domain only: backends bind from their side (BindBackend).
  if (!Self(op->remote_dom)) return XenError(XEN_EINVAL);
  absl::MutexLock lock(&mutex_);
  const uint32_t remote = op->remote_port;
  if (!ValidPortLocked(remote) || ports_[remote].type != PortType::kUnbound ||
      ports_[remote].remote_domain != config_.domid) {
    return XenError(XEN_EINVAL);
  }
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return XenError(XEN_ENOSPC);
  ports_[*port].type = PortType::kInterdomain;
  ports_[*port].remote_domain = config_.domid;
  ports_[*port].remote_port = remote;
  ports_[*port].vcpu = 0;
  ports_[remote].type = PortType::kInterdomain;
  ports_[remote].remote_port = *port;
  op->local_port = *port;
  if (int64_t answered = AnswerOrCloseLocked(*port, caller.access.WriteObject(arg, *op)); answered != 0) {
    return answered;
  }
  RouteLocked(*port);
  RouteLocked(remote);
  // Xen raises the new local port, so that events sent before the bind are not lost.
  RaiseLocked(*port);
  return 0;
}

int64_t EventChannels::BindVirq(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_bind_virq_t> op = caller.access.ReadObject<evtchn_bind_virq_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  if (op->virq >= kNrVirqs) return XenError(XEN_EINVAL);
  absl::MutexLock lock(&mutex_);
  if (!vcpus_.Attached(op->vcpu)) return XenError(XEN_ENOENT);
  if (!PerVcpuVirq(op->virq) && op->vcpu != 0) return XenError(XEN_EINVAL);  // global VIRQs: vCPU 0
  uint32_t& slot = virq_ports_[op->vcpu][op->virq];
  if (slot != 0) return XenError(XEN_EEXIST);
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return XenError(XEN_ENOSPC);
  ports_[*port].type = PortType::kVirq;
  ports_[*port].virq = op->virq;
  ports_[*port].vcpu = op->vcpu;
  slot = *port;
  op->port = *port;
  if (int64_t answered = AnswerOrCloseLocked(*port, caller.access.WriteObject(arg, *op)); answered != 0) {
    return answered;
  }
  if (op->virq == VIRQ_TIMER && !fifo_.active()) delivery_.SetTimerPort(op->vcpu, *port);
  return 0;
}

int64_t EventChannels::BindIpi(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_bind_ipi_t> op = caller.access.ReadObject<evtchn_bind_ipi_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  absl::MutexLock lock(&mutex_);
  if (!vcpus_.Attached(op->vcpu)) return XenError(XEN_ENOENT);
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return XenError(XEN_ENOSPC);
  ports_[*port].type = PortType::kIpi;
  ports_[*port].vcpu = op->vcpu;
  op->port = *port;
  if (int64_t answered = AnswerOrCloseLocked(*port, caller.access.WriteObject(arg, *op)); answered != 0) {
    return answered;
  }
  RouteLocked(*port);
  return 0;
}

// close, send and unmask: a port is all they take (evtchn_close_t, evtchn_send_t, evtchn_unmask_t).
int64_t EventChannels::PortOnlyOp(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  static_assert(sizeof(evtchn_close_t) == 4 && sizeof(evtchn_send_t) == 4 && sizeof(evtchn_unmask_t) == 4);
  std::optional<uint32_t> port = caller.access.ReadObject<uint32_t>(arg);
  if (!port) return XenError(XEN_EFAULT);
  if (command == EVTCHNOP_send) return Send(*port);
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(*port)) return XenError(XEN_EINVAL);
  switch (command) {
    case EVTCHNOP_close:
      if (ports_[*port].type == PortType::kClosed) return XenError(XEN_EINVAL);
      ClosePortLocked(*port);
      return 0;
    default:  // EVTCHNOP_unmask: an event that arrived while masked is delivered now
      if (fifo_.active()) {
        ++event_generation_;
        FinishFifoRaiseLocked(*port, fifo_.Unmask(*port, ports_[*port].vcpu));
      } else if (pages_.UnmaskFindsPending(*port)) {
        ++event_generation_;
        CountLocked(*port, delivery_.DeliverUnmasked(*port, ports_[*port].vcpu));
      }
      return 0;
  }
}

int64_t EventChannels::Status(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_status_t> op = caller.access.ReadObject<evtchn_status_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  if (!Self(op->dom)) return XenError(XEN_ESRCH);
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(op->port)) return XenError(XEN_EINVAL);
  const Port& p = ports_[op->port];
  op->status = static_cast<uint32_t>(p.type);
  op->vcpu = p.vcpu;
  std::memset(&op->u, 0, sizeof(op->u));
  switch (p.type) {
    case PortType::kUnbound:
      op->u.unbound.dom = p.remote_domain;
      break;
    case PortType::kInterdomain:
      op->u.interdomain.dom = p.backend ? kBackendDomain : p.remote_domain;
      op->u.interdomain.port = p.backend ? 0 : p.remote_port;
      break;
    case PortType::kVirq:
      op->u.virq = p.virq;
      break;
    default:
      break;
  }
  return caller.access.WriteObject(arg, *op) ? 0 : XenError(XEN_EFAULT);
}

int64_t EventChannels::BindVcpu(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_bind_vcpu_t> op = caller.access.ReadObject<evtchn_bind_vcpu_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(op->port)) return XenError(XEN_EINVAL);
  if (!vcpus_.Attached(op->vcpu)) return XenError(XEN_ENOENT);
  Port& p = ports_[op->port];
  if (p.type == PortType::kClosed || p.type == PortType::kIpi || (p.type == PortType::kVirq && PerVcpuVirq(p.virq))) {
    return XenError(XEN_EINVAL);
  }
  p.vcpu = op->vcpu;
  if (p.type == PortType::kInterdomain && !p.backend) RouteLocked(p.remote_port);  // delivers here
  return 0;
}

int64_t EventChannels::Reset(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_reset_t> op = caller.access.ReadObject<evtchn_reset_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  if (!Self(op->dom)) return XenError(XEN_ESRCH);
  absl::MutexLock lock(&mutex_);
  for (uint32_t port = 1; port < ports_.size(); ++port) {
    if (ports_[port].type != PortType::kClosed && !ports_[port].backend) ClosePortLocked(port);
  }
  if (fifo_.active()) {
    fifo_.Reset();  // back to 2-level, as Xen
    CloseBeyondLimitLocked(/*backends_too=*/true);
  }
  delivery_.ResetRoutes();
  return 0;
}

int64_t EventChannels::InitControl(HypercallCaller& caller, uint64_t arg) {
  static_assert(sizeof(evtchn_init_control_t) == 24);
  std::optional<evtchn_init_control_t> op = caller.access.ReadObject<evtchn_init_control_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  absl::MutexLock lock(&mutex_);
  const bool switching = !fifo_.active();
  std::vector<uint32_t> pending;  // what 2-level had pending goes over to FIFO
  for (uint32_t port = 1; switching && port < ports_.size(); ++port) {
    if (ports_[port].type != PortType::kClosed && pages_.IsPending(port)) pending.push_back(port);
  }
  if (int64_t initialised = fifo_.InitControl(op->vcpu, op->control_gfn, op->offset, pending); initialised != 0) {
    return initialised;
  }
  if (switching) {
    ports_.resize(std::max<size_t>(fifo_.max_ports(), ports_.size()));
    // The kernel's event support knows 2-level only: the shim's FIFO path takes everything.
    delivery_.ResetRoutes();
    for (uint32_t vcpu = 0; vcpu < virq_ports_.size(); ++vcpu) {
      if (virq_ports_[vcpu][VIRQ_TIMER] != 0) delivery_.SetTimerPort(vcpu, 0);
    }
  }
  op->link_bits = kFifoLinkBits;
  return caller.access.WriteObject(arg, *op) ? 0 : XenError(XEN_EFAULT);
}

int64_t EventChannels::ExpandArray(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_expand_array_t> op = caller.access.ReadObject<evtchn_expand_array_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  absl::MutexLock lock(&mutex_);
  std::vector<uint32_t> reraise;
  if (int64_t expanded = fifo_.ExpandArray(op->array_gfn, &reraise); expanded != 0) return expanded;
  for (uint32_t port : reraise) {
    if (port < ports_.size() && ports_[port].type != PortType::kClosed) RaiseLocked(port);
  }
  return 0;
}

int64_t EventChannels::SetPriority(HypercallCaller& caller, uint64_t arg) {
  std::optional<evtchn_set_priority_t> op = caller.access.ReadObject<evtchn_set_priority_t>(arg);
  if (!op) return XenError(XEN_EFAULT);
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(op->port) || ports_[op->port].type == PortType::kClosed) return XenError(XEN_EINVAL);
  return fifo_.SetPriority(op->port, op->priority);
}

void EventChannels::WaitForEvents(uint32_t vcpu, const std::vector<uint32_t>& ports,
                                  std::optional<uint64_t> deadline_ns, bool interrupts_enabled) {
  absl::MutexLock lock(&mutex_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (stopping_) return true;
    if (pages_.UpcallPending(vcpu) && (ports.empty() || interrupts_enabled)) return true;
    return std::any_of(ports.begin(), ports.end(),
                       [this](uint32_t port) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return IsPendingLocked(port); });
  };
  vcpus_.SetBlocked(vcpu, true);
  while (!ready()) {
    const uint64_t generation = event_generation_;
    auto changed = [this, generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return event_generation_ != generation || stopping_;
    };
    if (deadline_ns) {
      const uint64_t now = clock_.NowNs();
      if (now >= *deadline_ns) break;
      mutex_.AwaitWithTimeout(absl::Condition(&changed), absl::Nanoseconds(*deadline_ns - now));
    } else {
      mutex_.Await(absl::Condition(&changed));
    }
  }
  vcpus_.SetBlocked(vcpu, false);
}

void EventChannels::Stop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
}

// ---- Backend side

absl::StatusOr<uint32_t> EventChannels::AllocateBackendPort(EventHandler handler) {
  absl::MutexLock lock(&mutex_);
  std::optional<uint32_t> port = AllocatePortLocked();
  if (!port) return absl::ResourceExhaustedError("Xen shim: no free event channel for a backend");
  ports_[*port].type = PortType::kInterdomain;
  ports_[*port].backend = true;
  ports_[*port].remote_domain = kBackendDomain;
  ports_[*port].handler = std::make_shared<BackendHandler>(std::move(handler), HandlerThread::kBackendLoop);
  return *port;
}

absl::Status EventChannels::BindBackend(uint32_t guest_port, EventHandler handler, HandlerThread thread) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(guest_port) || ports_[guest_port].type != PortType::kUnbound ||
      ports_[guest_port].remote_domain != kBackendDomain) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "Xen shim: guest port %u is not waiting for a backend (alloc_unbound with remote domain 0)", guest_port));
  }
  Port& p = ports_[guest_port];
  p.type = PortType::kInterdomain;
  p.backend = true;
  p.handler = std::make_shared<BackendHandler>(std::move(handler), thread);
  bindings_[guest_port] = p.handler;
  return absl::OkStatus();
}

absl::Status EventChannels::UnbindBackend(uint32_t guest_port) {
  absl::MutexLock lock(&mutex_);
  const bool bound_now = ValidPortLocked(guest_port) && ports_[guest_port].backend;
  auto binding = bindings_.extract(guest_port);  // there even if the guest closed the port
  if (!bound_now && binding.empty()) {
    return absl::NotFoundError(absl::StrFormat("Xen shim: guest port %u is not bound to a backend", guest_port));
  }
  std::shared_ptr<BackendHandler> handler = binding.empty() ? ports_[guest_port].handler : binding.mapped();
  if (bound_now) {
    Port& p = ports_[guest_port];
    p.type = PortType::kUnbound;
    p.backend = false;
    p.handler.reset();
  }
  if (handler) {
    handler->bound.store(false, std::memory_order_release);
    // A run on a sender's thread started before: waited for (Await lets the lock go meanwhile,
    // which the run may need to notify the guest).
    mutex_.Await(absl::Condition(
        +[](BackendHandler* waited) { return waited->sender_runs == 0; }, handler.get()));
  }
  return absl::OkStatus();
}

absl::Status EventChannels::NotifyGuest(uint32_t guest_port) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(guest_port) || !ports_[guest_port].backend) {
    return absl::FailedPreconditionError(
        absl::StrFormat("Xen shim: guest port %u is not bound to a backend (closed by the guest?)", guest_port));
  }
  ++ports_[guest_port].counters.sends;
  RaiseLocked(guest_port);
  return absl::OkStatus();
}

// ---- Statistics

std::vector<PortSnapshot> EventChannels::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  std::vector<PortSnapshot> snapshots;
  for (uint32_t port = 1; port < ports_.size(); ++port) {
    const Port& p = ports_[port];
    if (p.type == PortType::kClosed) continue;
    PortSnapshot snapshot;
    snapshot.port = port;
    snapshot.type = p.type;
    snapshot.vcpu = p.vcpu;
    snapshot.remote_domain = p.remote_domain;
    if (p.type == PortType::kInterdomain) snapshot.remote = p.backend ? "backend" : "loopback";
    snapshot.target = p.type == PortType::kVirq ? p.virq : p.remote_port;
    snapshot.pending = IsPendingLocked(port);
    snapshot.masked = IsMaskedLocked(port);
    snapshot.counters = p.counters;
    snapshots.push_back(snapshot);
  }
  return snapshots;
}

absl::Status EventChannels::InjectEvent(uint32_t port) {
  absl::MutexLock lock(&mutex_);
  if (!ValidPortLocked(port)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("port %u is outside 1..%u, the guest's event channel range", port, PortLimitLocked() - 1));
  }
  if (ports_[port].type == PortType::kClosed) return absl::NotFoundError(absl::StrFormat("port %u is closed", port));
  ++ports_[port].counters.sends;
  RaiseLocked(port);
  return absl::OkStatus();
}

}  // namespace xenkvm::xen
