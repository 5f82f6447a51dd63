// Refusals that happen before any ioctl, so they run on every machine. The Vm under test wraps an
// eventfd instead of a VM descriptor: had any of these calls reached the kernel, it would have
// failed with ENOTTY (kUnimplemented) rather than with the refusal checked here.
#include <linux/kvm.h>

#include "components/base/event_fd.h"
#include "components/kvm/kvm.h"
#include "components/kvm/vm.h"
#include "components/kvm/xen_abi.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::kvm {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

Vm NotAVm(XenCapabilities xen) {
  absl::StatusOr<base::EventFd> event = base::EventFd::Create();
  EXPECT_TRUE(event.ok());
  base::Fd fd(::dup(event->fd()));
  return Vm::Adopt(std::move(fd), 4096, xen);
}

TEST(KvmOpenTest, MissingDeviceSaysKvmIsNotAvailable) {
  absl::StatusOr<Kvm> kvm = Kvm::Open("/nonexistent/dev/kvm");
  ASSERT_FALSE(kvm.ok());
  EXPECT_EQ(kvm.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(kvm.status()), HasSubstr("open /nonexistent/dev/kvm"));
  EXPECT_THAT(Message(kvm.status()), HasSubstr("KVM is not available"));
  EXPECT_THAT(Message(kvm.status()), HasSubstr("emu accelerator"));
  EXPECT_EQ(KvmUsable("/nonexistent/dev/kvm").code(), absl::StatusCode::kNotFound);
}

TEST(KvmOpenTest, SomethingThatIsNotKvmIsRefusedWithTheIoctlNamed) {
  absl::StatusOr<Kvm> kvm = Kvm::Open("/dev/null");
  ASSERT_FALSE(kvm.ok());
  EXPECT_THAT(Message(kvm.status()), HasSubstr("KVM_GET_API_VERSION"));
}

TEST(VmRefusalTest, VcpuBeforeSplitIrqchipIsRefused) {
  Vm vm = NotAVm(XenCapabilities(0x1ff));
  absl::StatusOr<Vcpu> vcpu = vm.CreateVcpu(0);
  ASSERT_FALSE(vcpu.ok());
  EXPECT_EQ(vcpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(vcpu.status()), HasSubstr("EnableSplitIrqchip"));
}

TEST(VmRefusalTest, XenAttributesMissingFromTheProbedCapsAreRefusedBeforeAnyIoctl) {
  // What Linux 5.12 offers: no EVTCHN_SEND, no EVTCHN_2LEVEL, nothing from 6.2 on.
  Vm vm = NotAVm(XenCapabilities(kXenCapHypercallMsr | kXenCapInterceptHcall | kXenCapSharedInfo |
                                 kXenCapRunstate));
  auto expect_refused = [](const absl::Status& status, const char* capability) {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_THAT(Message(status), HasSubstr(capability));
  };
  expect_refused(vm.SetXenVersion(0x4000a), "EVTCHN_SEND");
  expect_refused(vm.GetXenVersion().status(), "EVTCHN_SEND");
  expect_refused(vm.XenEvtchnSend(3, 0), "EVTCHN_SEND");
  expect_refused(vm.AssignXenEvtchn({3, XenEvtchnRoute::Type::kInterdomain,
                                     XenEvtchnRoute::ToPort{4, 0}}),
                 "EVTCHN_SEND");
  expect_refused(vm.DeassignXenEvtchn(3), "EVTCHN_SEND");
  expect_refused(vm.ResetXenEvtchns(), "EVTCHN_SEND");
  expect_refused(vm.SetXenEvtchnRoute(40, 3, 0), "EVTCHN_2LEVEL");
  expect_refused(vm.SetXenRunstateUpdateFlag(true), "RUNSTATE_UPDATE_FLAG (Linux 6.2+)");
  expect_refused(vm.SetXenSharedInfoHva(0x7f0000000000), "SHARED_INFO_HVA (Linux 6.9+)");
  EXPECT_TRUE(vm.routes().size() == 0);

  // What it does offer gets as far as the kernel (here: an eventfd, so ENOTTY).
  EXPECT_EQ(vm.SetXenLongMode(true).code(), absl::StatusCode::kUnimplemented);
}

TEST(VmRefusalTest, NoXenSupportAtAllSaysSo) {
  Vm vm = NotAVm(XenCapabilities());
  absl::Status status = vm.ConfigureXenHypercalls(kXenHypercallMsrDefault);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(status), HasSubstr("CONFIG_KVM_XEN"));
  EXPECT_EQ(vm.SetXenSharedInfoGfn(0x100).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(VmRefusalTest, HypercallMsrMustBeNonZeroAndInRange) {
  Vm vm = NotAVm(XenCapabilities(0x1ff));
  absl::Status zero = vm.ConfigureXenHypercalls(0);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(zero), HasSubstr("MSR 0"));
  absl::Status low = vm.ConfigureXenHypercalls(0x3fffffff);
  EXPECT_EQ(low.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(low), HasSubstr("0x3fffffff is outside 0x40000000..0x4fffffff"));
  EXPECT_EQ(vm.ConfigureXenHypercalls(0x50000000).code(), absl::StatusCode::kInvalidArgument);
  absl::Status hyperv = vm.ConfigureXenHypercalls(kXenHypercallMsrDefault, /*hyperv_leaves=*/true);
  EXPECT_EQ(hyperv.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(hyperv), HasSubstr("0x40000200"));
  // Valid values reach the kernel.
  EXPECT_EQ(vm.ConfigureXenHypercalls(kXenHypercallMsrDefault).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(vm.ConfigureXenHypercalls(kXenHypercallMsrWithHyperV, true).code(),
            absl::StatusCode::kUnimplemented);
}

TEST(VmRefusalTest, BadArgumentsAreRefused) {
  Vm vm = NotAVm(XenCapabilities(0x1ff));
  EXPECT_THAT(Message(vm.SetXenUpcallVector(0x0e)), HasSubstr("exception vector"));
  EXPECT_EQ(vm.SetXenUpcallVector(0x0e).code(), absl::StatusCode::kInvalidArgument);
  absl::Status ipi = vm.AssignXenEvtchn({5, XenEvtchnRoute::Type::kIpi, XenEvtchnRoute::ToPort{6, 0}});
  EXPECT_EQ(ipi.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(ipi), HasSubstr("must equal send_port"));
  EXPECT_EQ(vm.AssignXenEvtchn({5, XenEvtchnRoute::Type::kIpi, XenEvtchnRoute::ToEventFd{3}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vm.AssignXenEvtchn({5, XenEvtchnRoute::Type::kInterdomain, XenEvtchnRoute::ToEventFd{-1}}).code(),
            absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(vm.RemoveUserMemoryRegion(3).code(), absl::StatusCode::kNotFound);
  alignas(4096) static uint8_t page[4096];
  EXPECT_THAT(Message(vm.SetUserMemoryRegion(0, 0x1000, 0, page)), HasSubstr("size 0"));
  EXPECT_THAT(Message(vm.SetUserMemoryRegion(0, 0x1800, 4096, page)), HasSubstr("page-aligned"));

  absl::StatusOr<base::EventFd> event = base::EventFd::Create();
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(vm.RegisterIoeventfd(*event, {IoEventSpec::Space::kPio, 0x30, 3}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vm.RegisterIoeventfd(*event, {IoEventSpec::Space::kPio, 0x30, 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vm.RegisterIoeventfd(*event, {IoEventSpec::Space::kMmio, 0x1000, 0, 5}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(VmRefusalTest, FailedIoctlsNameTheIoctl) {
  Vm vm = NotAVm(XenCapabilities(0x1ff));
  absl::Status status = vm.EnableSplitIrqchip();
  EXPECT_THAT(Message(status), HasSubstr("KVM_ENABLE_CAP"));
  EXPECT_THAT(Message(status), HasSubstr("errno 25"));
  EXPECT_FALSE(vm.split_irqchip());
  // A refused routing table leaves the committed one unchanged.
  EXPECT_THAT(Message(vm.SetMsiRoute(5, 0xfee00000, 0x30)), HasSubstr("KVM_SET_GSI_ROUTING"));
  EXPECT_EQ(vm.routes().size(), 0u);
}

}  // namespace
}  // namespace xenkvm::kvm
