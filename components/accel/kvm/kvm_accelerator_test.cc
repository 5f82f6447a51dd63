// The kvm accelerator running the same guest code as the emu tests, on real KVM. Each test skips,
// with the reason, where /dev/kvm is not usable. Differences from emu are the point of some tests:
// KVM keeps a CLI; HLT vCPU inside the kernel (no HaltExit), and without the kernel's Xen support
// the hypercall page exits through a port.
#include "components/accel/kvm/kvm_accelerator.h"

#include <unistd.h>

#include "components/accel/testdata/guest_test.h"
#include "components/kvm/kvm.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

using memory::GuestAddress;
using testing::kLoadAddress;
using testing::kStartInfo;

class KvmAccelTest : public testing::GuestTest {
 protected:
  void SetUp() override {
    if (absl::Status usable = kvm::KvmUsable(); !usable.ok()) {
      GTEST_SKIP() << "needs a usable /dev/kvm: " << usable.message();
    }
    GuestTest::SetUp();
  }
  absl::StatusOr<std::unique_ptr<Accelerator>> CreateAccelerator(
      const memory::GuestMemory& memory) override {
    return CreateKvmAccelerator(memory);
  }
};

TEST_F(KvmAccelTest, StartsInThePvhEntryState) {
  auto vcpu = Start(emu_test_guests::k_pvh_state);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kStartInfo);  // EBX
  uint32_t cr0 = Next<PortIoExit>(*vcpu).value;
  EXPECT_EQ(cr0 & 1, 1u);
  EXPECT_EQ(cr0 & 0x80000000u, 0u);
  Next<PortIoExit>(*vcpu);  // CS
  absl::StatusOr<ControlRegisters> control = vcpu->GetControlRegisters();
  ASSERT_TRUE(control.ok());
  EXPECT_EQ(control->efer, 0u);
  EXPECT_FALSE(control->long_mode);
  EXPECT_EQ(accelerator_->capabilities().name, "kvm");
  EXPECT_FALSE(accelerator_->capabilities().reports_eoi);  // the LAPIC is in the kernel
}

// The guests' TSC rate is KVM's own answer where it has one (no calibration at start), and it
// agrees with the host's TSC.
TEST_F(KvmAccelTest, TscRateComesFromKvm) {
  const uint64_t khz = accelerator_->tsc_khz();
  EXPECT_NEAR(static_cast<double>(khz), static_cast<double>(HostTscKhz()), HostTscKhz() * 0.005);
}

TEST_F(KvmAccelTest, PortIoAndMmioExitsAndCompletion) {
  auto vcpu = Start(emu_test_guests::k_port_io);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit out = Next<PortIoExit>(*vcpu);
  EXPECT_TRUE(out.is_write);
  EXPECT_EQ(out.port, 0x10);
  EXPECT_EQ(out.value, 0x42u);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xdeadbeefu);
  PortIoExit in = Next<PortIoExit>(*vcpu);
  EXPECT_FALSE(in.is_write);
  EXPECT_EQ(vcpu->Run().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(vcpu->Complete(0x1a5).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value & 0xff, 0xa5u);

  auto mmio = Start(emu_test_guests::k_mmio, 1);
  ASSERT_NE(mmio, nullptr);
  MmioExit store = Next<MmioExit>(*mmio);
  EXPECT_TRUE(store.is_write);
  EXPECT_EQ(store.address, 0xfebf0000u);
  EXPECT_EQ(store.value, 0xcafef00du);
  ASSERT_TRUE(mmio->Complete(0).ok() == false);  // a store asks for nothing
  MmioExit load = Next<MmioExit>(*mmio);
  EXPECT_FALSE(load.is_write);
  ASSERT_TRUE(mmio->Complete(0x11223344).ok());
  EXPECT_EQ(Next<PortIoExit>(*mmio).value, 0x11223344u);
}

TEST_F(KvmAccelTest, StringPortIoBecomesOneExitPerItem) {
  auto vcpu = Start(emu_test_guests::k_string_io);
  ASSERT_NE(vcpu, nullptr);
  ExpectStringPortIo(*vcpu);
}

TEST_F(KvmAccelTest, CpuidLeavesComeFromTheCallerAndHideKvms) {
  auto vcpu = Start(emu_test_guests::k_cpuid_leaves);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_TRUE(vcpu->SetCpuid({{0x40000000, std::nullopt, 0x40000004, 0x566e6558, 0x65584d4d, 0x4d4d566e},
                              {0x40000004, 0, 0xaaaa, 0, 0, 0},
                              {0x40000004, 1, 0xbbbb, 0, 0, 0}})
                  .ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x566e6558u);  // "XenV", not "KVMK"
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xbbbbu);
  EXPECT_GT(Next<PortIoExit>(*vcpu).value, 0u);
}

TEST_F(KvmAccelTest, HypercallPageFilledOnTheMsrWrite) {
  constexpr uint32_t kMsr = 0x40000000;
  absl::Status enabled = accelerator_->EnableHypercallPage(kMsr);
  if (absl::IsFailedPrecondition(enabled)) GTEST_SKIP() << enabled.message();
  ASSERT_TRUE(enabled.ok()) << enabled;
  auto vcpu = Start(emu_test_guests::k_hypercall_page_adjacent);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_TRUE(vcpu->SetCpuid({{0x40000002, std::nullopt, 1, kMsr, 0, 0}}).ok());
  HypercallExit call = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(call.number, 17u);
  EXPECT_FALSE(call.long_mode);
  EXPECT_EQ(call.cpl, 0);
  EXPECT_EQ(call.args, (std::array<uint64_t, 6>{1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(vcpu->Complete(static_cast<uint64_t>(-38)).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, static_cast<uint32_t>(-38));
}

TEST_F(KvmAccelTest, LongModeGuestHypercallThroughThePage) {
  // The long-mode guest uses an inline VMCALL, which only a kernel with Xen support forwards.
  if (!accelerator_->capabilities().inline_vmcall) {
    GTEST_SKIP() << "this kernel has no KVM Xen support (CONFIG_KVM_XEN): inline VMCALL stays in KVM";
  }
  ASSERT_TRUE(accelerator_->EnableHypercallPage(0x40000000).ok());
  auto vcpu = Start(emu_test_guests::k_long_mode);
  ASSERT_NE(vcpu, nullptr);
  HypercallExit call = Next<HypercallExit>(*vcpu);
  EXPECT_TRUE(call.long_mode);
  EXPECT_EQ(call.args, (std::array<uint64_t, 6>{0x100000001, 2, 3, 4, 5, 0x600000000}));
}

constexpr uint32_t kOptionSkipVmcall = 4;

// KVM-PVM (a software virtualisation KVM module, found on the development machines) cannot emulate
// IRET in 32-bit protected mode; it is built for 64-bit guests.
bool KvmIsPvm() { return access("/sys/module/kvm_pvm", F_OK) == 0; }

TEST_F(KvmAccelTest, ExceptionsAndInterruptsThroughA32BitIdt) {
  if (KvmIsPvm()) GTEST_SKIP() << "KVM-PVM cannot emulate IRET in 32-bit protected mode";
  auto vcpu = Start(emu_test_guests::k_interrupts32);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kLoadAddress + emu_test_guests::k_ud_instruction32);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kLoadAddress + emu_test_guests::k_de_instruction32);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kLoadAddress + emu_test_guests::k_de_instruction32_again);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kLoadAddress + emu_test_guests::k_after_int3_32);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x10);
  Exit woken = RunAndInject(*vcpu, 0x30);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(woken));
  EXPECT_EQ(std::get<PortIoExit>(woken).port, 0x18);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x11);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x12);
  Exit spun = RunAndInject(*vcpu, 0x31);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(spun));
  EXPECT_EQ(std::get<PortIoExit>(spun).port, 0x18);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x14);
  ASSERT_TRUE(vcpu->InjectInterrupt(0x30).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0u);  // masked
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x18);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x16);
}

TEST_F(KvmAccelTest, LongModeExceptionAndInterruptThroughA64BitIdt) {
  ASSERT_TRUE(memory_->WriteObject<uint32_t>(
      GuestAddress(kLoadAddress + emu_test_guests::k_guest_options), kOptionSkipVmcall).ok());
  auto vcpu = Start(emu_test_guests::k_long_mode);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit ud = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(ud.port, 0x19);
  EXPECT_EQ(ud.value, kLoadAddress + emu_test_guests::k_ud_instruction64);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x12);
  EXPECT_EQ(*vcpu->TranslateLinear(0x123456), 0x123456u);
  EXPECT_EQ(vcpu->TranslateLinear(uint64_t{1} << 31).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(vcpu->TscOffset().ok());
  Exit woken = RunAndInject(*vcpu, 0x30);
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(woken));
  EXPECT_EQ(std::get<PortIoExit>(woken).value, kLoadAddress + emu_test_guests::k_stack_top - 48);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x18u);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);
}

TEST_F(KvmAccelTest, KickAndSecondaryVcpuStart) {
  auto spinner = Start(emu_test_guests::k_spin);
  ASSERT_NE(spinner, nullptr);
  std::thread kicker([&] {
    absl::SleepFor(absl::Milliseconds(50));
    spinner->Kick();
  });
  Next<KickedExit>(*spinner);
  kicker.join();
  spinner->Kick();
  Next<KickedExit>(*spinner);

  absl::StatusOr<std::unique_ptr<Vcpu>> created = accelerator_->CreateVcpu(1, std::nullopt);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Vcpu> ap = std::move(created).value();
  std::atomic<bool> returned{false};
  absl::StatusOr<Exit> exit;
  std::thread runner([&] {
    exit = ap->Run();
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(returned.load());
  ASSERT_TRUE(ap->Start(PvhEntry{kLoadAddress + emu_test_guests::k_ap_entry, 0}).ok());
  runner.join();
  ASSERT_TRUE(exit.ok()) << exit.status();
  ASSERT_TRUE(std::holds_alternative<PortIoExit>(*exit));
  EXPECT_EQ(std::get<PortIoExit>(*exit).port, 0x1c);
  absl::StatusOr<uint32_t> flag = memory_->ReadObject<uint32_t>(
      GuestAddress(kLoadAddress + emu_test_guests::k_shared_flag));
  ASSERT_TRUE(flag.ok());
  EXPECT_EQ(*flag, 0x1234u);
  EXPECT_EQ(ap->Start(PvhEntry{kLoadAddress, 0}).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xenkvm::accel
