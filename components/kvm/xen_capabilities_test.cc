#include "components/kvm/xen_capabilities.h"

#include "components/kvm/xen_abi.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::kvm {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(XenCapabilitiesTest, ConfigFlagsKeepOnlyWhatTheKernelAccepts) {
  XenCapabilities all(0x1ff);
  EXPECT_EQ(all.ConfigFlags(), kXenCapInterceptHcall | kXenCapEvtchnSend | kXenCapPvclockTscUnstable);
  XenCapabilities linux_5_12(kXenCapHypercallMsr | kXenCapInterceptHcall | kXenCapSharedInfo |
                             kXenCapRunstate);
  EXPECT_EQ(linux_5_12.ConfigFlags(), kXenCapInterceptHcall);
  EXPECT_EQ(XenCapabilities().ConfigFlags(), 0u);
}

TEST(XenCapabilitiesTest, RequireNamesCapabilityAndKernelVersion) {
  XenCapabilities linux_5_17(0x1f);
  EXPECT_TRUE(linux_5_17.Require(XenCapability::kEvtchn2Level, "PIRQ routing").ok());
  absl::Status status = linux_5_17.Require(XenCapability::kEvtchnSend, "KVM_XEN_HVM_EVTCHN_SEND");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(status), HasSubstr("KVM_XEN_HVM_EVTCHN_SEND needs"));
  EXPECT_THAT(Message(status), HasSubstr("EVTCHN_SEND (Linux 5.19+)"));
  EXPECT_THAT(Message(status), HasSubstr("HYPERCALL_MSR|INTERCEPT_HCALL"));
}

TEST(XenCapabilitiesTest, EmptySetSaysTheKernelHasNoXenSupport) {
  absl::Status status = XenCapabilities().Require(XenCapability::kSharedInfo, "shared_info");
  EXPECT_THAT(Message(status), HasSubstr("CONFIG_KVM_XEN"));
  EXPECT_TRUE(XenCapabilities().empty());
}

TEST(XenCapabilitiesTest, ToStringListsEveryBitIncludingUnknownOnes) {
  EXPECT_EQ(XenCapabilities().ToString(), "none");
  EXPECT_EQ(XenCapabilities(kXenCapSharedInfo | kXenCapSharedInfoHva).ToString(),
            "SHARED_INFO|SHARED_INFO_HVA");
  EXPECT_EQ(XenCapabilities(1u << 12 | 1).ToString(), "HYPERCALL_MSR|0x1000");
  EXPECT_EQ(XenCapabilities::MinimumLinux(XenCapability::kRunstateUpdateFlag), "6.2");
}

}  // namespace
}  // namespace xenkvm::kvm
