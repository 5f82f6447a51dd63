// VCPUOP_*: vcpu_info placement, and the timers the vCPUs set.
#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

using ::testing::HasSubstr;

TEST_F(ShimTest, VcpuInfoRegistrationIsChecked) {
  MapSharedInfo();
  auto register_at = [this](uint64_t mfn, uint32_t offset, uint32_t vcpu = 0) {
    Put(vcpu_register_vcpu_info_t{mfn, offset, 0});
    return Call(__HYPERVISOR_vcpu_op, {VCPUOP_register_vcpu_info, vcpu, kArg});
  };
  EXPECT_EQ(register_at(0xd0000, 0), E(XEN_EINVAL));         // not RAM
  EXPECT_EQ(register_at(0x40, 4090), E(XEN_EINVAL));         // crosses the page
  EXPECT_EQ(register_at(0x40, 4), E(XEN_EINVAL));            // misaligned
  EXPECT_EQ(register_at(~uint64_t{0}, 0), E(XEN_EINVAL));    // overflows
  EXPECT_EQ(register_at(0x40, 0, 5), E(XEN_ENOENT));         // no such vCPU
  EXPECT_EQ(register_at(0x40, 64), 0);
  EXPECT_EQ(register_at(0x41, 0), E(XEN_EINVAL));            // once only
  // The registered vcpu_info took over: an event lands there, with pvclock time in it.
  EXPECT_EQ(Get<uint8_t>(0x40040), 1);  // everything marked pending on the move, as Xen does
  EXPECT_NE(Get<uint32_t>(0x40040 + 32 + 24), 0u);  // tsc_to_system_mul
  EXPECT_EQ(Get<uint32_t>(0x40040 + 32) % 2, 0u);   // version even
}

TEST_F(ShimTest, TimersFireVirqTimer) {
  MapSharedInfo();
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_virq), 0);
  uint32_t timer = Get<evtchn_bind_virq_t>().port;
  struct Singleshot {
    uint64_t timeout;
    uint32_t flags, pad;
  };
  Put(Singleshot{1, VCPU_SSHOTTMR_future, 0});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_singleshot_timer, 0, kArg}), E(XEN_ETIME));
  Put(Singleshot{shim_->SystemTimeNs() + 2'000'000, 0, 0});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_singleshot_timer, 0, kArg}), 0);
  for (int i = 0; i < 500 && !Port(timer)->pending; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_TRUE(Port(timer)->pending);
  Put(uint64_t{500'000});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_periodic_timer, 0, kArg}), E(XEN_EINVAL));  // < 1 ms
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_stop_singleshot_timer, 0, 0}), 0);
  EXPECT_EQ(Call(__HYPERVISOR_set_timer_op, {0}), 0);
}

}  // namespace
}  // namespace xenkvm::xen
