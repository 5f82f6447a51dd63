// Behaviour on real KVM: exits, state, interrupt delivery. Skips where /dev/kvm is not usable.
#include <linux/kvm.h>

#include <cstring>

#include "absl/time/clock.h"
#include "components/base/event_fd.h"
#include "components/kvm/kvm_test_guest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::kvm {
namespace {

using testing::Code;
using testing::TestVm;
using ::testing::HasSubstr;

std::unique_ptr<TestVm> NewVm(int vcpus = 1) {
  absl::StatusOr<std::unique_ptr<TestVm>> vm = TestVm::Create(vcpus);
  EXPECT_TRUE(vm.ok()) << vm.status();
  return vm.ok() ? std::move(vm).value() : nullptr;
}

template <typename Exit>
Exit RunUntil(Vcpu& vcpu) {
  absl::StatusOr<VcpuExit> exit = vcpu.Run();
  EXPECT_TRUE(exit.ok()) << exit.status();
  if (!exit.ok()) return Exit{};
  EXPECT_TRUE(std::holds_alternative<Exit>(*exit)) << "exit variant index " << exit->index();
  return std::holds_alternative<Exit>(*exit) ? std::get<Exit>(*exit) : Exit{};
}

uint32_t Value(std::span<const uint8_t> data) {
  uint32_t value = 0;
  std::memcpy(&value, data.data(), std::min<size_t>(data.size(), 4));
  return value;
}

TEST(KvmSystemTest, ReportsWhatTheHostOffers) {
  XENKVM_SKIP_WITHOUT_KVM();
  absl::StatusOr<Kvm> kvm = Kvm::Open();
  ASSERT_TRUE(kvm.ok()) << kvm.status();
  EXPECT_GE(*kvm->VcpuMmapSize(), sizeof(kvm_run));
  EXPECT_EQ(*kvm->CheckExtension(KVM_CAP_SPLIT_IRQCHIP), 1);
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> cpuid = kvm->SupportedCpuid();
  ASSERT_TRUE(cpuid.ok()) << cpuid.status();
  EXPECT_GT(cpuid->size(), 10u);
  EXPECT_EQ((*cpuid)[0].function, 0u);  // a misplaced entries array would not start at leaf 0
  absl::StatusOr<std::vector<uint32_t>> msrs = kvm->MsrIndexList();
  ASSERT_TRUE(msrs.ok()) << msrs.status();
  EXPECT_THAT(*msrs, ::testing::Contains(0x10u));  // IA32_TIME_STAMP_COUNTER
  EXPECT_TRUE(kvm->ProbeXen().ok());
}

TEST(KvmVmTest, DecodesPortIoAndMmioExitsAndCompletesThem) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  Code code;
  code.MovAlImm(0x42).OutImmAl(0x10);                                          // OUT imm8, al
  code.Bytes({0x66, 0xba, 0x34, 0x12}).MovEaxImm(0xdeadbeef).Bytes({0xef});   // OUT dx=0x1234, eax
  code.InAlImm(0x11).OutImmAl(0x12);                                          // IN, then echo it
  code.MovEaxImm(0xcafef00d).Bytes({0xa3}).Imm64(testing::kMmioAddress);      // MMIO write
  code.Bytes({0xa1}).Imm64(testing::kMmioAddress + 8).OutImmEax(0x13);        // MMIO read, echo
  ASSERT_TRUE(vm->LoadCode(code).ok());
  Vcpu& vcpu = vm->vcpus[0];

  IoExit out = RunUntil<IoExit>(vcpu);
  EXPECT_TRUE(out.is_write);
  EXPECT_EQ(out.port, 0x10);
  EXPECT_EQ(out.size, 1);
  EXPECT_EQ(out.count, 1u);
  EXPECT_EQ(Value(out.data), 0x42u);

  IoExit wide = RunUntil<IoExit>(vcpu);
  EXPECT_EQ(wide.port, 0x1234);
  EXPECT_EQ(wide.size, 4);
  EXPECT_EQ(Value(wide.data), 0xdeadbeefu);

  IoExit in = RunUntil<IoExit>(vcpu);
  EXPECT_FALSE(in.is_write);
  EXPECT_EQ(in.port, 0x11);
  ASSERT_EQ(in.data.size(), 1u);
  in.data[0] = 0x5a;
  IoExit echo = RunUntil<IoExit>(vcpu);
  EXPECT_EQ(echo.port, 0x12);
  EXPECT_EQ(Value(echo.data), 0x5au);

  MmioExit mmio_write = RunUntil<MmioExit>(vcpu);
  EXPECT_TRUE(mmio_write.is_write);
  EXPECT_EQ(mmio_write.address, testing::kMmioAddress);
  ASSERT_EQ(mmio_write.data.size(), 4u);
  EXPECT_EQ(Value(mmio_write.data), 0xcafef00du);

  MmioExit mmio_read = RunUntil<MmioExit>(vcpu);
  EXPECT_FALSE(mmio_read.is_write);
  EXPECT_EQ(mmio_read.address, testing::kMmioAddress + 8);
  ASSERT_EQ(mmio_read.data.size(), 4u);
  uint32_t answer = 0x11223344;
  std::memcpy(mmio_read.data.data(), &answer, 4);
  IoExit echo_mmio = RunUntil<IoExit>(vcpu);
  EXPECT_EQ(echo_mmio.port, 0x13);
  EXPECT_EQ(Value(echo_mmio.data), 0x11223344u);
}

TEST(KvmVmTest, ImmediateExitReturnsWithoutRunningTheGuest) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(vm->LoadCode(Code().MovAlImm(1).OutImmAl(0x10)).ok());
  Vcpu& vcpu = vm->vcpus[0];
  vcpu.RequestImmediateExit(true);
  RunUntil<InterruptedExit>(vcpu);
  EXPECT_EQ(vcpu.GetRegs()->rip, testing::kCode);
  vcpu.RequestImmediateExit(false);
  EXPECT_EQ(RunUntil<IoExit>(vcpu).port, 0x10);
}

TEST(KvmVmTest, SignalMsiRunsTheGuestIdtHandler) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(vm->LoadCode(Code().Sti().Hlt().MovAlImm(0x66).OutImmAl(0x21)).ok());
  absl::StatusOr<bool> delivered = vm->vm.SignalMsi(0xfee00000, 0x40);  // APIC 0, fixed, vector 0x40
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_TRUE(*delivered);
  Vcpu& vcpu = vm->vcpus[0];
  IoExit handler = RunUntil<IoExit>(vcpu);
  EXPECT_EQ(handler.port, testing::kVectorReportPort);
  EXPECT_EQ(Value(handler.data), 0x40u);
  IoExit after = RunUntil<IoExit>(vcpu);  // iretq returned past the HLT
  EXPECT_EQ(after.port, 0x21);
}

TEST(KvmVmTest, IrqfdThroughAnMsiRouteInjectsTheVector) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(vm->vm.SetMsiRoute(10, 0xfee00000, 0x41).ok());
  ASSERT_TRUE(vm->vm.SetMsiRoute(11, 0xfee00000, 0x42).ok());
  ASSERT_TRUE(vm->vm.RemoveRoute(11).ok());
  EXPECT_EQ(vm->vm.routes().size(), 1u);
  absl::StatusOr<base::EventFd> trigger = base::EventFd::Create();
  ASSERT_TRUE(trigger.ok());
  ASSERT_TRUE(vm->vm.RegisterIrqfd(*trigger, 10).ok());
  ASSERT_TRUE(vm->LoadCode(Code().Sti().Hlt().MovAlImm(0x66).OutImmAl(0x21)).ok());
  ASSERT_TRUE(trigger->Write(1).ok());
  IoExit handler = RunUntil<IoExit>(vm->vcpus[0]);
  EXPECT_EQ(handler.port, testing::kVectorReportPort);
  EXPECT_EQ(Value(handler.data), 0x41u);
  EXPECT_TRUE(vm->vm.UnregisterIrqfd(*trigger, 10).ok());
}

TEST(KvmVmTest, IoeventfdSignalsWithoutAnExitAndHonoursDatamatch) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  absl::StatusOr<base::EventFd> any = base::EventFd::Create();
  absl::StatusOr<base::EventFd> seven = base::EventFd::Create();
  ASSERT_TRUE(any.ok() && seven.ok());
  ASSERT_TRUE(vm->vm.RegisterIoeventfd(*any, {IoEventSpec::Space::kPio, 0x30, 1}).ok());
  ASSERT_TRUE(vm->vm.RegisterIoeventfd(*seven, {IoEventSpec::Space::kPio, 0x32, 1, 7}).ok());
  Code code;
  code.MovAlImm(1).OutImmAl(0x30);  // absorbed by the ioeventfd
  code.MovAlImm(7).OutImmAl(0x32);  // matches: absorbed
  code.MovAlImm(8).OutImmAl(0x32);  // does not match: an ordinary exit
  ASSERT_TRUE(vm->LoadCode(code).ok());
  IoExit exit = RunUntil<IoExit>(vm->vcpus[0]);
  EXPECT_EQ(exit.port, 0x32);
  EXPECT_EQ(Value(exit.data), 8u);
  EXPECT_EQ(*any->Read(), 1u);
  EXPECT_EQ(*seven->Read(), 1u);
  EXPECT_TRUE(vm->vm.UnregisterIoeventfd(*any, {IoEventSpec::Space::kPio, 0x30, 1}).ok());
}

TEST(KvmVcpuTest, StateRoundTrips) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  Vcpu& vcpu = vm->vcpus[0];

  kvm_regs regs = *vcpu.GetRegs();
  regs.rbx = 0x1122334455667788;
  regs.r15 = 42;
  ASSERT_TRUE(vcpu.SetRegs(regs).ok());
  EXPECT_EQ(vcpu.GetRegs()->rbx, 0x1122334455667788u);
  EXPECT_EQ(vcpu.GetRegs()->r15, 42u);
  EXPECT_EQ(vcpu.GetSregs()->efer & 0x500, 0x500u);

  const kvm_msr_entry sysenter_cs{0x174, 0, 0x10};
  ASSERT_TRUE(vcpu.SetMsrs({&sysenter_cs, 1}).ok());
  const uint32_t indices[] = {0x174, 0x10};
  absl::StatusOr<std::vector<kvm_msr_entry>> msrs = vcpu.GetMsrs(indices);
  ASSERT_TRUE(msrs.ok()) << msrs.status();
  EXPECT_EQ((*msrs)[0].index, 0x174u);
  EXPECT_EQ((*msrs)[0].data, 0x10u);
  const uint32_t unknown[] = {0x174, 0xdead0000};
  absl::StatusOr<std::vector<kvm_msr_entry>> partial = vcpu.GetMsrs(unknown);
  EXPECT_THAT(std::string(partial.status().message()), HasSubstr("0xdead0000"));

  absl::StatusOr<std::vector<kvm_cpuid_entry2>> cpuid = vcpu.GetCpuid();
  ASSERT_TRUE(cpuid.ok()) << cpuid.status();
  // KVM's own hypervisor leaves come first and would win: replace them, as the Xen shim must.
  std::erase_if(*cpuid, [](const kvm_cpuid_entry2& entry) {
    return entry.function >= 0x40000000 && entry.function < 0x40010000;
  });
  kvm_cpuid_entry2 leaf{};
  leaf.function = 0x40000000;
  leaf.eax = 0x40000004;
  leaf.ebx = 0x566e6558;  // "XenV"
  cpuid->push_back(leaf);
  ASSERT_TRUE(vcpu.SetCpuid(*cpuid).ok());
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> again = vcpu.GetCpuid();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), cpuid->size());
  EXPECT_EQ(again->back().function, 0x40000000u);
  EXPECT_EQ(again->back().ebx, 0x566e6558u);

  // The guest sees it.
  ASSERT_TRUE(vm->LoadCode(Code().MovEaxImm(0x40000000).Bytes({0x0f, 0xa2}).Bytes({0x89, 0xd8}).OutImmEax(0x10)).ok());
  EXPECT_EQ(Value(RunUntil<IoExit>(vcpu).data), 0x566e6558u);

  ASSERT_TRUE(vcpu.SetLapic(*vcpu.GetLapic()).ok());
  ASSERT_TRUE(vcpu.SetEvents(*vcpu.GetEvents()).ok());
  ASSERT_TRUE(vcpu.SetFpu(*vcpu.GetFpu()).ok());
  absl::StatusOr<kvm_xcrs> xcrs = vcpu.GetXcrs();
  if (xcrs.ok()) {
    EXPECT_TRUE(vcpu.SetXcrs(*xcrs).ok());
  }
  EXPECT_GT(*vcpu.GetTscKhz(), 0u);

  absl::StatusOr<kvm_clock_data> clock = vm->vm.GetClock();
  ASSERT_TRUE(clock.ok()) << clock.status();
  kvm_clock_data later{};
  later.clock = clock->clock + 1'000'000'000;
  ASSERT_TRUE(vm->vm.SetClock(later).ok());
  EXPECT_GE(vm->vm.GetClock()->clock, later.clock);
}

TEST(KvmVmTest, LifecycleRefusals) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  EXPECT_EQ(vm->vm.CreateVcpu(0).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(vm->vm.EnableSplitIrqchip().ok());  // already on: nothing to do
  absl::StatusOr<Vcpu> second = vm->vm.CreateVcpu(1);
  EXPECT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(vm->vcpus[0].CompleteXenHypercall(0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(vm->vcpus[0].CompleteMsr(false).code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<Kvm> kvm = Kvm::Open();
  absl::StatusOr<Vm> fresh = kvm->CreateVm();
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->CreateVcpu(0).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(KvmVmTest, UserSpaceMsrExitsCarryTheAccess) {
  XENKVM_SKIP_WITHOUT_KVM();
  auto vm = NewVm();
  ASSERT_NE(vm, nullptr);
  absl::StatusOr<int> supported = vm->vm.CheckExtension(KVM_CAP_X86_USER_SPACE_MSR);
  if (!supported.ok() || *supported == 0) GTEST_SKIP() << "KVM_CAP_X86_USER_SPACE_MSR missing";
  ASSERT_TRUE(vm->vm.EnableUserSpaceMsr(KVM_MSR_EXIT_REASON_UNKNOWN).ok());
  ASSERT_TRUE(vm->LoadCode(Code().Wrmsr(0x40000000, 0x123000).OutImmAl(0x10)).ok());
  Vcpu& vcpu = vm->vcpus[0];
  MsrExit msr = RunUntil<MsrExit>(vcpu);
  EXPECT_TRUE(msr.is_write);
  EXPECT_EQ(msr.index, 0x40000000u);
  EXPECT_EQ(msr.data, 0x123000u);
  EXPECT_EQ(msr.reason, static_cast<uint32_t>(KVM_MSR_EXIT_REASON_UNKNOWN));
  ASSERT_TRUE(vcpu.CompleteMsr(false).ok());
  EXPECT_EQ(RunUntil<IoExit>(vcpu).port, 0x10);
}

}  // namespace
}  // namespace xenkvm::kvm
