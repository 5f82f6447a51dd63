// Upcalls and the two EventDelivery implementations: the kernel's (skipped where the kernel lacks
// it) and owed upcalls retried while upcall_pending is set.
#include <atomic>

#include "absl/time/clock.h"
#include "components/accel/kvm/kvm_accelerator.h"
#include "components/kvm/kvm.h"
#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

// The kernel's event delivery (kvm with KVM_CAP_XEN_HVM EVTCHN_SEND, Linux 5.19+): skipped where the
// kernel lacks it, as on the development machines.
TEST(ShimKvmTest, KernelDeliveryRaisesPortsInGuestMemory) {
  if (absl::Status usable = kvm::KvmUsable(); !usable.ok()) GTEST_SKIP() << "needs a usable /dev/kvm: " << usable.message();
  auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
  ASSERT_TRUE(memory.ok());
  auto accelerator = accel::CreateKvmAccelerator(*memory);
  ASSERT_TRUE(accelerator.ok()) << accelerator.status();
  if ((*accelerator)->kernel_xen_events() == nullptr) {
    GTEST_SKIP() << "needs KVM's Xen event delivery (KVM_CAP_XEN_HVM EVTCHN_SEND, Linux 5.19+, CONFIG_KVM_XEN)";
  }
  auto shim = Shim::Create(XenConfig{}, *memory, **accelerator, {});
  ASSERT_TRUE(shim.ok());
  EXPECT_TRUE((*shim)->kernel_delivery());
  auto vcpu = (*accelerator)->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0});
  ASSERT_TRUE(vcpu.ok());
  ASSERT_TRUE((*shim)->AttachVcpu(**vcpu).ok());
  auto call = [&](uint64_t number, std::array<uint64_t, 6> args) {
    return static_cast<int64_t>((*shim)->Hypercall(**vcpu, accel::HypercallExit{number, args, true, 0}));
  };
  struct {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, kSharedInfo >> 12};
  ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), add).ok());
  ASSERT_EQ(call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), evtchn_alloc_unbound_t{DOMID_SELF, DOMID_SELF, 0}).ok());
  ASSERT_EQ(call(__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg}), 0);
  uint32_t port = memory->ReadObject<evtchn_alloc_unbound_t>(GuestAddress(kArg))->port;
  ASSERT_TRUE((*shim)->event_channels().InjectEvent(port).ok());
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(kSharedInfo + 0x800)) >> port & 1, 1u);
  EXPECT_EQ(*memory->ReadObject<uint8_t>(GuestAddress(kSharedInfo)), 1);  // vcpu_info[0] upcall_pending
}


// A vCPU whose local APIC is off until the test turns it on: InjectInterrupt fails meanwhile, as
// KVM's does before the guest enables its LAPIC. Everything else goes to a real emu vCPU.
class LapicOffVcpu final : public accel::Vcpu {
 public:
  explicit LapicOffVcpu(std::unique_ptr<accel::Vcpu> inner) : inner_(std::move(inner)) {}
  uint32_t id() const override { return inner_->id(); }
  absl::StatusOr<accel::Exit> Run() override { return inner_->Run(); }
  absl::Status Complete(uint64_t value) override { return inner_->Complete(value); }
  absl::StatusOr<accel::Registers> GetRegisters() override { return inner_->GetRegisters(); }
  absl::Status SetRegisters(const accel::Registers& r) override { return inner_->SetRegisters(r); }
  absl::StatusOr<accel::ControlRegisters> GetControlRegisters() override { return inner_->GetControlRegisters(); }
  absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) override { return inner_->TranslateLinear(linear); }
  absl::StatusOr<int64_t> TscOffset() override { return inner_->TscOffset(); }
  absl::Status SetCpuid(std::vector<accel::CpuidLeaf> leaves) override { return inner_->SetCpuid(std::move(leaves)); }
  absl::Status Start(const accel::PvhEntry& boot) override { return inner_->Start(boot); }
  absl::Status InjectInterrupt(uint8_t vector) override {
    if (!lapic_enabled.load()) return absl::FailedPreconditionError("the guest has not enabled its local APIC");
    ++injected;
    return absl::OkStatus();
  }
  void Kick() override { inner_->Kick(); }

  std::atomic<bool> lapic_enabled{false};
  std::atomic<int> injected{0};

 private:
  std::unique_ptr<accel::Vcpu> inner_;
};

// Xen delivers an upcall while upcall_pending is set: one the vCPU could not take is not lost but
// raised again, at its next hypercall and by the timer thread, once the vCPU can take it.
TEST(ShimUpcallTest, UpcallNotTakenIsRetriedWhileUpcallPendingIsSet) {
  auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
  ASSERT_TRUE(memory.ok());
  auto accelerator = accel::CreateEmuAccelerator(*memory);
  ASSERT_TRUE(accelerator.ok());
  auto shim = Shim::Create(XenConfig{}, *memory, **accelerator, {});
  ASSERT_TRUE(shim.ok());
  auto inner = (*accelerator)->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0});
  ASSERT_TRUE(inner.ok());
  LapicOffVcpu vcpu(std::move(inner).value());
  ASSERT_TRUE((*shim)->AttachVcpu(vcpu).ok());
  auto call = [&](uint64_t number, std::array<uint64_t, 6> args) {
    return static_cast<int64_t>((*shim)->Hypercall(vcpu, accel::HypercallExit{number, args, true, 0}));
  };
  auto put = [&](const auto& object) { ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), object).ok()); };
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, kSharedInfo >> 12};
  put(add);
  ASSERT_EQ(call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  put(xen_hvm_param_t{DOMID_SELF, 0, HVM_PARAM_CALLBACK_IRQ, (uint64_t{HVM_PARAM_CALLBACK_TYPE_VECTOR} << 56) | 0xf3});
  ASSERT_EQ(call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), 0);
  put(evtchn_alloc_unbound_t{DOMID_SELF, DOMID_SELF, 0});
  ASSERT_EQ(call(__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg}), 0);
  const uint32_t port = memory->ReadObject<evtchn_alloc_unbound_t>(GuestAddress(kArg))->port;
  ASSERT_TRUE((*shim)->event_channels().InjectEvent(port).ok());  // upcall_pending set; the vCPU cannot take it
  EXPECT_EQ(vcpu.injected.load(), 0);

  vcpu.lapic_enabled = true;  // the guest enables its LAPIC: the timer thread raises it again
  for (int i = 0; i < 200 && vcpu.injected.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_GE(vcpu.injected.load(), 1);
  const int after_timer = vcpu.injected.load();
  // Taken: nothing more is raised while the guest has not seen new events.
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(vcpu.injected.load(), after_timer);
  // Not taken again, the guest having cleared upcall_pending meanwhile: the debt is dropped.
  vcpu.lapic_enabled = false;
  ASSERT_TRUE(memory->WriteObject<uint8_t>(GuestAddress(kSharedInfo), 0).ok());      // upcall_pending
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(kSharedInfo + 0x800), 0).ok());  // pending bits
  ASSERT_TRUE((*shim)->event_channels().InjectEvent(port).ok());
  ASSERT_TRUE(memory->WriteObject<uint8_t>(GuestAddress(kSharedInfo), 0).ok());
  vcpu.lapic_enabled = true;
  EXPECT_EQ(call(__HYPERVISOR_xen_version, {XENVER_version, 0}), 0x40011);
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(vcpu.injected.load(), after_timer);
}

}  // namespace
}  // namespace xenkvm::xen
