#include "components/xen/upcall.h"

#include <string>

#include "spdlog/spdlog.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

Upcalls::Upcalls(SharedPages& pages, uint32_t vcpus, bool kernel_injects_vector,
                 std::function<void(uint32_t, bool)> set_gsi, std::function<void()> owed)
    : pages_(pages),
      kernel_injects_vector_(kernel_injects_vector),
      set_gsi_(std::move(set_gsi)),
      owed_(std::move(owed)),
      vcpus_(vcpus) {}

void Upcalls::Attach(uint32_t vcpu, accel::Vcpu* accel_vcpu) {
  absl::MutexLock lock(&mutex_);
  if (vcpu < vcpus_.size()) vcpus_[vcpu].vcpu = accel_vcpu;
}

void Upcalls::SetCallbackVia(uint64_t via) {
  absl::MutexLock lock(&mutex_);
  callback_via_ = via;
}

uint64_t Upcalls::callback_via() const {
  absl::MutexLock lock(&mutex_);
  return callback_via_;
}

void Upcalls::SetVcpuVector(uint32_t vcpu, uint8_t vector) {
  absl::MutexLock lock(&mutex_);
  if (vcpu < vcpus_.size()) vcpus_[vcpu].vector = vector;
}

bool Upcalls::GsiRouteLocked() const {
  return callback_via_ != 0 && (callback_via_ >> 56) == HVM_PARAM_CALLBACK_TYPE_GSI && set_gsi_;
}

void Upcalls::Raise(uint32_t vcpu) {
  absl::MutexLock lock(&mutex_);
  RaiseLocked(vcpu);
}

void Upcalls::RaiseLocked(uint32_t vcpu) {
  if (vcpu >= vcpus_.size() || vcpus_[vcpu].vcpu == nullptr) return;
  VcpuRoute& route = vcpus_[vcpu];
  const uint64_t type = callback_via_ >> 56;
  // With the kernel's HVM-wide vector, the kernel injects while upcall_pending is set, at the
  // vCPU's next entry: make it enter. (A per-vCPU vector is a LAPIC interrupt either way.)
  if (kernel_injects_vector_ && route.vector == 0 && type == HVM_PARAM_CALLBACK_TYPE_VECTOR && callback_via_ != 0) {
    route.vcpu->Kick();
    return;
  }
  uint8_t vector = route.vector;
  if (vector == 0) {
    if (callback_via_ == 0) return;  // no upcall configured: the guest polls
    if (type == HVM_PARAM_CALLBACK_TYPE_GSI) {
      // The line follows vCPU 0's upcall_pending; other vCPUs' events wait for vCPU 0 (as Xen).
      if (vcpu == 0 && set_gsi_) set_gsi_(static_cast<uint32_t>(callback_via_ & 0xffffffff), true);
      return;
    }
    if (type != HVM_PARAM_CALLBACK_TYPE_VECTOR) {
      if (!intx_warned_) {
        spdlog::warn("Xen shim: the guest asked for a PCI INTx event callback ({:#x}); xenkvm has no PCI "
                     "bus yet, so this guest gets no upcalls",
                     callback_via_);
        intx_warned_ = true;
      }
      return;
    }
    vector = static_cast<uint8_t>(callback_via_ & 0xff);
  }
  // The per-vCPU vector is a LAPIC interrupt the guest EOIs; the HVM-wide one bypasses the LAPIC.
  absl::Status injected =
      route.vector != 0 ? route.vcpu->InjectInterrupt(vector) : route.vcpu->InjectXenCallback(vector);
  const bool newly_owed = !injected.ok() && !route.owed;
  route.owed = !injected.ok();
  if (!route.owed) return;
  // Before the timer thread is told: woken, it must find the debt.
  any_owed_.store(true, std::memory_order_release);
  if (newly_owed) {
    spdlog::debug("Xen shim: upcall vector {:#x} to vCPU {} not injected ({}); retried while upcall_pending is set",
                  vector, vcpu, std::string(injected.message()));
    if (owed_) owed_();
  }
}

void Upcalls::RaiseAllPending() {
  absl::MutexLock lock(&mutex_);
  for (uint32_t v = 0; v < vcpus_.size(); ++v) {
    if (pages_.UpcallPending(v)) RaiseLocked(v);
  }
}

bool Upcalls::RetryOwed(uint32_t vcpu) {
  if (!any_owed_.load(std::memory_order_acquire)) return false;
  absl::MutexLock lock(&mutex_);
  return RetryOwedLocked(vcpu);
}

bool Upcalls::RetryAllOwed() {
  if (!any_owed_.load(std::memory_order_acquire)) return false;
  absl::MutexLock lock(&mutex_);
  bool any = false;
  for (uint32_t v = 0; v < vcpus_.size(); ++v) any |= RetryOwedLocked(v);
  if (!any) any_owed_.store(false, std::memory_order_release);
  return any;
}

bool Upcalls::RetryOwedLocked(uint32_t vcpu) {
  if (vcpu >= vcpus_.size() || !vcpus_[vcpu].owed) return false;
  if (!pages_.UpcallPending(vcpu)) {
    vcpus_[vcpu].owed = false;  // the guest saw its events another way
    return false;
  }
  RaiseLocked(vcpu);
  return vcpus_[vcpu].owed;
}

void Upcalls::RefreshCallbackGsi() {
  absl::MutexLock lock(&mutex_);
  if (!GsiRouteLocked()) return;
  set_gsi_(static_cast<uint32_t>(callback_via_ & 0xffffffff), pages_.UpcallPending(0));
}

void Upcalls::AssertGsiAfterKernelSend(uint32_t vcpu) {
  absl::MutexLock lock(&mutex_);
  if (vcpu != 0 || !GsiRouteLocked() || !pages_.UpcallPending(0)) return;
  set_gsi_(static_cast<uint32_t>(callback_via_ & 0xffffffff), true);
}

namespace {

class UserspaceDelivery final : public EventDelivery {
 public:
  UserspaceDelivery(SharedPages& pages, Upcalls& upcalls) : pages_(pages), upcalls_(upcalls) {}

  bool in_kernel() const override { return false; }
  RaiseOutcome Raise(uint32_t port, uint32_t vcpu) override {
    switch (pages_.Raise(port, vcpu)) {
      case SharedPages::Raised::kAlreadyPending:
        return {};
      case SharedPages::Raised::kMasked:
        return {.newly_pending = true, .masked = true};
      case SharedPages::Raised::kAlreadyNotified:
        return {.newly_pending = true};
      case SharedPages::Raised::kUpcallNeeded:
        upcalls_.Raise(vcpu);
        return {.newly_pending = true, .upcall = true};
    }
    return {};
  }
  RaiseOutcome DeliverUnmasked(uint32_t port, uint32_t vcpu) override {
    if (!pages_.MarkVcpuPending(vcpu, port)) return {};
    upcalls_.Raise(vcpu);
    return {.upcall = true};
  }
  void RouteSends(uint32_t, std::optional<SendRoute>) override {}
  void ResetRoutes() override {}
  void SetTimerPort(uint32_t, uint32_t) override {}
  void LongModeLatched(bool) override {}
  void SharedInfoPlaced(uint64_t) override {}
  void VcpuInfoPlaced(uint32_t) override {}
  void CallbackRouteChanged(uint64_t) override {}
  void VcpuVectorChanged(uint32_t, uint8_t) override {}

 private:
  SharedPages& pages_;
  Upcalls& upcalls_;
};

}  // namespace

std::unique_ptr<EventDelivery> CreateUserspaceDelivery(SharedPages& pages, Upcalls& upcalls) {
  return std::make_unique<UserspaceDelivery>(pages, upcalls);
}

}  // namespace xenkvm::xen
