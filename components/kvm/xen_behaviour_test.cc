// KVM's Xen support, mirroring the parts of the kernel's xen_vmcall_test and xen_shinfo_test that
// apply. Each test needs a usable /dev/kvm and the Xen capabilities it names; otherwise it skips and
// says what is missing.
#include <linux/kvm.h>

#include <cstddef>
#include <cstring>

#include "absl/time/clock.h"
#include "components/base/event_fd.h"
#include "components/kvm/kvm_test_guest.h"
#include "components/kvm/xen_abi.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"

namespace xenkvm::kvm {
namespace {

using memory::GuestAddress;
using testing::Code;
using testing::TestVm;

// Guest pages used by these tests.
constexpr uint64_t kSharedInfo = testing::kData;            // shared_info page
constexpr uint64_t kVcpuInfo = testing::kData + 0x1000;     // vcpu_info for vCPU 0
constexpr uint64_t kHypercallPage = testing::kData + 0x2000;
constexpr uint64_t kArgs = testing::kData + 0x3000;          // hypercall argument structs
constexpr uint8_t kUpcallVector = 0xf0;

// 64-bit shared_info layout, from Xen's public headers.
constexpr uint64_t kEvtchnPending = offsetof(shared_info, evtchn_pending);
constexpr uint64_t kEvtchnMask = offsetof(shared_info, evtchn_mask);
static_assert(kEvtchnPending == 0x800 && kEvtchnMask == 0xa00);
static_assert(offsetof(vcpu_info, evtchn_pending_sel) == 8);

#define XENKVM_SKIP_WITHOUT_XEN(capability)                                                  \
  XENKVM_SKIP_WITHOUT_KVM();                                                                 \
  do {                                                                                       \
    absl::StatusOr<Kvm> kvm_ = Kvm::Open();                                                  \
    absl::StatusOr<XenCapabilities> caps_ = kvm_->ProbeXen();                                \
    absl::Status needed_ = caps_.ok() ? caps_->Require(capability, "this test") : caps_.status(); \
    if (!needed_.ok()) GTEST_SKIP() << needed_.message();                                    \
  } while (0)

std::unique_ptr<TestVm> XenVm() {
  absl::StatusOr<std::unique_ptr<TestVm>> vm = TestVm::Create();
  EXPECT_TRUE(vm.ok()) << vm.status();
  if (!vm.ok()) return nullptr;
  absl::Status configured = (*vm)->vm.ConfigureXenHypercalls(kXenHypercallMsrDefault);
  EXPECT_TRUE(configured.ok()) << configured;
  return std::move(vm).value();
}

// Maps shared_info and vCPU 0's vcpu_info, in 64-bit layout.
void MapSharedInfo(TestVm& vm) {
  ASSERT_TRUE(vm.vm.SetXenLongMode(true).ok());
  ASSERT_TRUE(vm.vm.SetXenSharedInfoGfn(kSharedInfo >> 12).ok());
  ASSERT_TRUE(vm.vcpus[0].SetXenVcpuInfo(kVcpuInfo).ok());
}

template <typename Exit>
Exit RunUntil(Vcpu& vcpu) {
  absl::StatusOr<VcpuExit> exit = vcpu.Run();
  EXPECT_TRUE(exit.ok()) << exit.status();
  if (!exit.ok() || !std::holds_alternative<Exit>(*exit)) {
    ADD_FAILURE() << "unexpected exit (variant index " << (exit.ok() ? exit->index() : -1) << ")";
    return Exit{};
  }
  return std::get<Exit>(*exit);
}

uint32_t Value(std::span<const uint8_t> data) {
  uint32_t value = 0;
  std::memcpy(&value, data.data(), std::min<size_t>(data.size(), 4));
  return value;
}

// Guest code: EVTCHNOP_send(port), then OUT 0x10 with the hypercall's result.
void LoadEvtchnSend(TestVm& vm, uint32_t port) {
  ASSERT_TRUE(vm.memory.WriteObject<uint32_t>(GuestAddress(kArgs), port).ok());
  Code code;
  code.MovRegImm(0, __HYPERVISOR_event_channel_op).MovRegImm(7, EVTCHNOP_send).MovRegImm(6, kArgs);
  code.Vmcall().OutImmEax(0x10);
  ASSERT_TRUE(vm.LoadCode(code).ok());
}

bool PortBit(const TestVm& vm, uint64_t array, uint32_t port) {
  uint64_t word = *vm.memory.ReadObject<uint64_t>(GuestAddress(kSharedInfo + array + 8 * (port / 64)));
  return (word >> (port % 64)) & 1;
}

TEST(XenKvmTest, HypercallExitCarriesTheArgumentsAndTheResultReachesRax) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kInterceptHypercall);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  Code code;
  code.MovRegImm(0, 0x1d);  // rax: hypercall number
  code.MovRegImm(7, 0x11).MovRegImm(6, 0x22).MovRegImm(2, 0x33);
  code.MovRegImm(10, 0x44).MovRegImm(8, 0x55).MovRegImm(9, 0x66);
  code.Vmcall().OutImmEax(0x10);
  ASSERT_TRUE(vm->LoadCode(code).ok());
  Vcpu& vcpu = vm->vcpus[0];
  XenHypercallExit call = RunUntil<XenHypercallExit>(vcpu);
  EXPECT_TRUE(call.long_mode);
  EXPECT_EQ(call.cpl, 0u);
  EXPECT_EQ(call.input, 0x1du);
  EXPECT_EQ(call.params, (std::array<uint64_t, 6>{0x11, 0x22, 0x33, 0x44, 0x55, 0x66}));
  ASSERT_TRUE(vcpu.CompleteXenHypercall(0x12345678).ok());
  IoExit result = RunUntil<IoExit>(vcpu);
  EXPECT_EQ(result.port, 0x10);
  EXPECT_EQ(Value(result.data), 0x12345678u);
}

TEST(XenKvmTest, HypercallPageIsFilledOnTheMsrWrite) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kInterceptHypercall);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  Code code;
  code.Wrmsr(kXenHypercallMsrDefault, kHypercallPage);
  code.MovRaxImm64(kHypercallPage + 17 * 32).CallRax().OutImmEax(0x10);
  ASSERT_TRUE(vm->LoadCode(code).ok());
  Vcpu& vcpu = vm->vcpus[0];
  XenHypercallExit call = RunUntil<XenHypercallExit>(vcpu);
  EXPECT_EQ(call.input, 17u);
  // Stub 17: mov $17, %eax; vmcall or vmmcall; ret.
  std::array<uint8_t, 9> stub{};
  ASSERT_TRUE(vm->memory.Read(GuestAddress(kHypercallPage + 17 * 32), stub).ok());
  EXPECT_EQ(stub[0], 0xb8);
  EXPECT_EQ(stub[1], 17);
  EXPECT_EQ(stub[5], 0x0f);
  EXPECT_EQ(stub[6], 0x01);
  EXPECT_TRUE(stub[7] == 0xc1 || stub[7] == 0xd9);
  EXPECT_EQ(stub[8], 0xc3);
  ASSERT_TRUE(vcpu.CompleteXenHypercall(0x1717).ok());
  EXPECT_EQ(Value(RunUntil<IoExit>(vcpu).data), 0x1717u);
}

TEST(XenKvmTest, AttributesRoundTrip) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kSharedInfo);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  EXPECT_TRUE(*vm->vm.GetXenLongMode());
  EXPECT_EQ(*vm->vm.GetXenSharedInfoGfn(), kSharedInfo >> 12);
  ASSERT_TRUE(vm->vm.SetXenUpcallVector(kUpcallVector).ok());
  EXPECT_EQ(*vm->vm.GetXenUpcallVector(), kUpcallVector);
  EXPECT_EQ(*vm->vcpus[0].GetXenVcpuInfo(), kVcpuInfo);
  ASSERT_TRUE(vm->vm.SetXenSharedInfoGfn(kXenInvalidGfn).ok());
  EXPECT_EQ(*vm->vm.GetXenSharedInfoGfn(), kXenInvalidGfn);
}

TEST(XenKvmTest, UpcallVectorFiresWhenUpcallPendingIsSet) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kSharedInfo);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  ASSERT_TRUE(vm->vm.SetXenUpcallVector(kUpcallVector).ok());
  // The guest enables interrupts and reports in a loop; the handler for the vector reports it.
  ASSERT_TRUE(vm->LoadCode(Code().Sti().MovAlImm(0x77).OutImmAl(0x11).Bytes({0xeb, 0xfa})).ok());
  Vcpu& vcpu = vm->vcpus[0];
  EXPECT_EQ(RunUntil<IoExit>(vcpu).port, 0x11);  // nothing pending yet
  ASSERT_TRUE(vm->memory.WriteObject<uint8_t>(GuestAddress(kVcpuInfo), 1).ok());  // upcall_pending
  // KVM injects the vector while upcall_pending stays set; clear it once the handler has run.
  bool handled = false;
  for (int i = 0; i < 4 && !handled; ++i) {
    IoExit exit = RunUntil<IoExit>(vcpu);
    if (exit.port == testing::kVectorReportPort) {
      EXPECT_EQ(Value(exit.data), kUpcallVector);
      handled = true;
      ASSERT_TRUE(vm->memory.WriteObject<uint8_t>(GuestAddress(kVcpuInfo), 0).ok());
    }
  }
  EXPECT_TRUE(handled);
}

TEST(XenKvmTest, EvtchnSendSetsPendingAndAMaskedPortRaisesNoUpcall) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kEvtchnSend);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  ASSERT_TRUE(vm->memory.WriteObject<uint64_t>(GuestAddress(kSharedInfo + kEvtchnMask), 1u << 15).ok());
  ASSERT_TRUE(vm->vm.XenEvtchnSend(15, 0).ok());
  EXPECT_TRUE(PortBit(*vm, kEvtchnPending, 15));
  EXPECT_EQ(*vm->memory.ReadObject<uint8_t>(GuestAddress(kVcpuInfo)), 0);  // no upcall

  ASSERT_TRUE(vm->vm.XenEvtchnSend(16, 0).ok());
  EXPECT_TRUE(PortBit(*vm, kEvtchnPending, 16));
  EXPECT_EQ(*vm->memory.ReadObject<uint8_t>(GuestAddress(kVcpuInfo)), 1);
  EXPECT_EQ(*vm->memory.ReadObject<uint64_t>(GuestAddress(kVcpuInfo + 8)) & 1, 1u);  // pending_sel
}

TEST(XenKvmTest, InKernelLoopbackDeliversAGuestSend) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kEvtchnSend);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  ASSERT_TRUE(vm->vm.AssignXenEvtchn({127, XenEvtchnRoute::Type::kInterdomain,
                                      XenEvtchnRoute::ToPort{15, 0}})
                  .ok());
  // EVTCHNOP_send(port 127): handled in the kernel, so the next exit is the OUT after it.
  LoadEvtchnSend(*vm, 127);
  IoExit exit = RunUntil<IoExit>(vm->vcpus[0]);
  EXPECT_EQ(exit.port, 0x10);
  EXPECT_EQ(Value(exit.data), 0u);  // the hypercall's result
  EXPECT_TRUE(PortBit(*vm, kEvtchnPending, 15));

  ASSERT_TRUE(vm->vm.DeassignXenEvtchn(127).ok());
  ASSERT_TRUE(vm->vm.ResetXenEvtchns().ok());
}

TEST(XenKvmTest, SendToAnEventfdSignalsIt) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kEvtchnSend);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  absl::StatusOr<base::EventFd> backend = base::EventFd::Create();
  ASSERT_TRUE(backend.ok());
  ASSERT_TRUE(vm->vm.AssignXenEvtchn({197, XenEvtchnRoute::Type::kInterdomain,
                                      XenEvtchnRoute::ToEventFd{backend->fd()}})
                  .ok());
  LoadEvtchnSend(*vm, 197);
  EXPECT_EQ(RunUntil<IoExit>(vm->vcpus[0]).port, 0x10);
  EXPECT_EQ(*backend->Read(), 1u);
}

TEST(XenKvmTest, InKernelTimerInThePastFiresAtOnceAndClears) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kEvtchnSend);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  Vcpu& vcpu = vm->vcpus[0];
  ASSERT_TRUE(vcpu.SetXenVcpuId(0).ok());
  EXPECT_EQ(*vcpu.GetXenVcpuId(), 0u);
  ASSERT_TRUE(vcpu.SetXenTimer({9, KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL, 1}).ok());
  ASSERT_TRUE(vm->LoadCode(Code().MovAlImm(1).OutImmAl(0x10).Bytes({0xeb, 0xfa})).ok());
  bool fired = false;
  for (int i = 0; i < 100 && !fired; ++i) {
    RunUntil<IoExit>(vcpu);
    fired = PortBit(*vm, kEvtchnPending, 9);
  }
  EXPECT_TRUE(fired);
  EXPECT_EQ(vcpu.GetXenTimer()->expires_ns, 0u);
}

TEST(XenKvmTest, RunstateAccounting) {
  XENKVM_SKIP_WITHOUT_XEN(XenCapability::kRunstate);
  auto vm = XenVm();
  ASSERT_NE(vm, nullptr);
  MapSharedInfo(*vm);
  Vcpu& vcpu = vm->vcpus[0];
  ASSERT_TRUE(vcpu.SetXenRunstateAddress(kArgs + 0x100).ok());
  EXPECT_EQ(*vcpu.GetXenRunstateAddress(), kArgs + 0x100);
  ASSERT_TRUE(vcpu.SetXenRunstateCurrent(1).ok());  // runnable
  EXPECT_EQ(*vcpu.GetXenRunstateCurrent(), 1u);
  absl::StatusOr<XenRunstate> data = vcpu.GetXenRunstateData();
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->state, 1u);
}

}  // namespace
}  // namespace xenkvm::kvm
