// EventDelivery through kvm's Xen event support (KVM_XEN_HVM_EVTCHN_SEND and the Xen attributes):
// written to KVM's documented ABI; the userspace path takes over wherever the kernel refuses.
#include <string>

#include "components/xen/upcall.h"
#include "spdlog/spdlog.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

void WarnIfFailed(const absl::Status& status, const std::string& what) {
  if (!status.ok()) spdlog::warn("Xen shim: kernel {}: {}", what, std::string(status.message()));
}

class KernelDelivery final : public EventDelivery {
 public:
  KernelDelivery(accel::KernelXenEvents& kernel, SharedPages& pages, Upcalls& upcalls)
      : kernel_(kernel), pages_(pages), upcalls_(upcalls), userspace_(CreateUserspaceDelivery(pages, upcalls)) {}

  bool in_kernel() const override { return true; }

  RaiseOutcome Raise(uint32_t port, uint32_t vcpu) override {
    std::optional<RaiseOutcome> sent = Send(port, vcpu);
    return sent ? *sent : userspace_->Raise(port, vcpu);
  }

  // The kernel raises nothing for a port already pending: cleared, then sent again.
  RaiseOutcome DeliverUnmasked(uint32_t port, uint32_t vcpu) override {
    if (!pages_.shared_info_gpa()) return userspace_->DeliverUnmasked(port, vcpu);
    pages_.TestAndClearPending(port);
    if (std::optional<RaiseOutcome> sent = Send(port, vcpu)) return *sent;
    pages_.TestAndSetPending(port);
    if (!pages_.MarkVcpuPending(vcpu, port)) return {};
    upcalls_.Raise(vcpu);
    return {.upcall = true};
  }

  void RouteSends(uint32_t port, std::optional<SendRoute> route) override {
    const absl::Status routed =
        route ? kernel_.RouteSend(port, route->ipi, route->to_port, route->to_vcpu) : kernel_.Unroute(port);
    WarnIfFailed(routed, "route for port " + std::to_string(port));
  }
  void ResetRoutes() override { (void)kernel_.ResetRoutes(); }
  void SetTimerPort(uint32_t vcpu, uint32_t port) override {
    const absl::Status set = kernel_.SetTimerPort(vcpu, port);
    if (port != 0) WarnIfFailed(set, "TIMER for vCPU " + std::to_string(vcpu));
  }
  void LongModeLatched(bool long_mode) override { WarnIfFailed(kernel_.SetLongMode(long_mode), "LONG_MODE"); }
  void SharedInfoPlaced(uint64_t gfn) override { WarnIfFailed(kernel_.SetSharedInfo(gfn), "SHARED_INFO"); }
  void VcpuInfoPlaced(uint32_t vcpu) override {
    if (std::optional<uint64_t> gpa = pages_.VcpuInfoGpa(vcpu)) {
      WarnIfFailed(kernel_.SetVcpuInfo(vcpu, *gpa), "VCPU_INFO for vCPU " + std::to_string(vcpu));
    }
  }
  void CallbackRouteChanged(uint64_t via) override {
    const bool vector = (via >> 56) == HVM_PARAM_CALLBACK_TYPE_VECTOR;
    WarnIfFailed(kernel_.SetUpcallVector(std::nullopt, vector ? via & 0xff : 0), "UPCALL_VECTOR");
  }
  void VcpuVectorChanged(uint32_t vcpu, uint8_t vector) override {
    WarnIfFailed(kernel_.SetUpcallVector(vcpu, vector), "per-vCPU UPCALL_VECTOR");
  }

 private:
  // The kernel sets pending, selector and upcall_pending and injects the upcall; the shim still
  // counts what it sees before and after (the upcall itself is the kernel's). nullopt: refused.
  std::optional<RaiseOutcome> Send(uint32_t port, uint32_t vcpu) {
    if (!pages_.shared_info_gpa()) return std::nullopt;
    const bool was_pending = pages_.IsPending(port);
    if (absl::Status sent = kernel_.Send(port, vcpu); !sent.ok()) {
      spdlog::debug("Xen shim: kernel EVTCHN_SEND of port {}: {}; delivering in userspace", port,
                    std::string(sent.message()));
      return std::nullopt;
    }
    RaiseOutcome outcome;
    outcome.newly_pending = !was_pending;
    outcome.masked = !was_pending && pages_.IsMasked(port);
    upcalls_.AssertGsiAfterKernelSend(vcpu);
    return outcome;
  }

  accel::KernelXenEvents& kernel_;
  SharedPages& pages_;
  Upcalls& upcalls_;
  const std::unique_ptr<EventDelivery> userspace_;
};

}  // namespace

std::unique_ptr<EventDelivery> CreateKernelDelivery(accel::KernelXenEvents& kernel, SharedPages& pages,
                                                    Upcalls& upcalls) {
  return std::make_unique<KernelDelivery>(kernel, pages, upcalls);
}

}  // namespace xenkvm::xen
