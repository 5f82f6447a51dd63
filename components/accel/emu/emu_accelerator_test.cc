// The emu accelerator running real guest code (assembled from testdata/guests.S).
#include "components/accel/emu/emu_accelerator.h"

#include <thread>

#include "absl/time/clock.h"
#include "components/accel/emu/testdata/guests.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

using memory::GuestAddress;
using ::testing::HasSubstr;

constexpr uint32_t kLoadAddress = 0x100000;
constexpr uint32_t kStartInfo = 0x5000;

class EmuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<memory::GuestMemory> created =
        memory::GuestMemory::Create({{GuestAddress(0), 2 << 20}});
    ASSERT_TRUE(created.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(created).value());
    ASSERT_TRUE(memory_->Write(GuestAddress(kLoadAddress), emu_test_guests::kText).ok());
    absl::StatusOr<std::unique_ptr<Accelerator>> accelerator = CreateEmuAccelerator(*memory_);
    ASSERT_TRUE(accelerator.ok());
    accelerator_ = std::move(accelerator).value();
  }

  std::unique_ptr<Vcpu> Start(unsigned label) {
    absl::StatusOr<std::unique_ptr<Vcpu>> vcpu =
        accelerator_->CreateVcpu(0, PvhEntry{kLoadAddress + label, kStartInfo});
    EXPECT_TRUE(vcpu.ok()) << vcpu.status();
    return vcpu.ok() ? std::move(vcpu).value() : nullptr;
  }

  template <typename E>
  static E Next(Vcpu& vcpu) {
    absl::StatusOr<Exit> exit = vcpu.Run();
    EXPECT_TRUE(exit.ok()) << exit.status();
    if (!exit.ok() || !std::holds_alternative<E>(*exit)) {
      ADD_FAILURE() << "unexpected exit, variant index " << (exit.ok() ? exit->index() : -1);
      return E{};
    }
    return std::get<E>(*exit);
  }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<Accelerator> accelerator_;
};

TEST_F(EmuTest, StartsInThePvhEntryState) {
  auto vcpu = Start(emu_test_guests::k_pvh_state);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, kStartInfo);  // EBX
  uint32_t cr0 = Next<PortIoExit>(*vcpu).value;
  EXPECT_EQ(cr0 & 1, 1u);                 // protected mode
  EXPECT_EQ(cr0 & 0x80000000u, 0u);       // paging off
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value & 0xffff, 0x08u);  // a flat code segment
  Next<HaltExit>(*vcpu);
  absl::StatusOr<ControlRegisters> control = vcpu->GetControlRegisters();
  ASSERT_TRUE(control.ok());
  EXPECT_EQ(control->efer, 0u);
  EXPECT_FALSE(control->long_mode);
  EXPECT_EQ(control->cpl, 0);
}

TEST_F(EmuTest, PortIoExitsAndCompletion) {
  auto vcpu = Start(emu_test_guests::k_port_io);
  ASSERT_NE(vcpu, nullptr);
  PortIoExit out = Next<PortIoExit>(*vcpu);
  EXPECT_TRUE(out.is_write);
  EXPECT_EQ(out.port, 0x10);
  EXPECT_EQ(out.size, 1);
  EXPECT_EQ(out.value, 0x42u);
  PortIoExit wide = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(wide.port, 0x1234);
  EXPECT_EQ(wide.size, 4);
  EXPECT_EQ(wide.value, 0xdeadbeefu);

  PortIoExit in = Next<PortIoExit>(*vcpu);
  EXPECT_FALSE(in.is_write);
  EXPECT_EQ(in.port, 0x11);
  EXPECT_EQ(vcpu->Run().status().code(), absl::StatusCode::kFailedPrecondition);  // unanswered
  ASSERT_TRUE(vcpu->Complete(0x1a5).ok());  // only AL is taken
  PortIoExit echo = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(echo.port, 0x12);
  EXPECT_EQ(echo.value & 0xff, 0xa5u);

  PortIoExit in32 = Next<PortIoExit>(*vcpu);
  EXPECT_EQ(in32.size, 4);
  ASSERT_TRUE(vcpu->Complete(0x87654321).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x87654321u);

  Next<HaltExit>(*vcpu);
  EXPECT_EQ(vcpu->Complete(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).port, 0x13);  // running again resumes after the HLT
}

TEST_F(EmuTest, HypercallsInlineAndThroughCpuid) {
  auto vcpu = Start(emu_test_guests::k_hypercalls);
  ASSERT_NE(vcpu, nullptr);
  HypercallExit vmcall = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(vmcall.number, 17u);
  EXPECT_FALSE(vmcall.long_mode);
  EXPECT_EQ(vmcall.cpl, 0);
  EXPECT_EQ(vmcall.args, (std::array<uint64_t, 6>{1, 2, 3, 4, 5, 6}));
  ASSERT_TRUE(vcpu->Complete(static_cast<uint64_t>(-38)).ok());  // -ENOSYS
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, static_cast<uint32_t>(-38));

  HypercallExit vmmcall = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(vmmcall.number, 18u);
  ASSERT_TRUE(vcpu->Complete(5).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 5u);

  HypercallExit by_cpuid = Next<HypercallExit>(*vcpu);
  EXPECT_EQ(by_cpuid.number, 0x20u);
  EXPECT_EQ(by_cpuid.args[0], 7u);
  ASSERT_TRUE(vcpu->Complete(0).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0u);
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 7u);  // EBX survived
  Next<HaltExit>(*vcpu);
}

TEST_F(EmuTest, CpuidLeavesComeFromTheCaller) {
  auto vcpu = Start(emu_test_guests::k_cpuid_leaves);
  ASSERT_NE(vcpu, nullptr);
  ASSERT_TRUE(vcpu->SetCpuid({{0x40000000, std::nullopt, 0x40000004, 0x566e6558, 0x65584d4d, 0x4d4d566e},
                              {0x40000004, 0, 0xaaaa, 0, 0, 0},
                              {0x40000004, 1, 0xbbbb, 0, 0, 0}})
                  .ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x566e6558u);  // "XenV"
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0xbbbbu);      // sub-leaf 1
  EXPECT_GT(Next<PortIoExit>(*vcpu).value, 0u);           // the CPU model's leaf 0
  EXPECT_EQ(vcpu->SetCpuid({{kEmuHypercallCpuidMagic | 3, std::nullopt, 0, 0, 0, 0}}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(EmuTest, MmioOutsideRamExits) {
  auto vcpu = Start(emu_test_guests::k_mmio);
  ASSERT_NE(vcpu, nullptr);
  MmioExit store = Next<MmioExit>(*vcpu);
  EXPECT_TRUE(store.is_write);
  EXPECT_EQ(store.address, 0xfebf0000u);
  EXPECT_EQ(store.size, 4);
  EXPECT_EQ(store.value, 0xcafef00du);
  MmioExit load = Next<MmioExit>(*vcpu);
  EXPECT_FALSE(load.is_write);
  EXPECT_EQ(load.address, 0xfebf0008u);
  ASSERT_TRUE(vcpu->Complete(0x11223344).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x11223344u);
}

TEST_F(EmuTest, KickStopsASpinningGuest) {
  auto vcpu = Start(emu_test_guests::k_spin);
  ASSERT_NE(vcpu, nullptr);
  std::thread kicker([&] {
    absl::SleepFor(absl::Milliseconds(50));
    vcpu->Kick();
  });
  Next<KickedExit>(*vcpu);
  kicker.join();
  vcpu->Kick();  // before Run(): the next Run() returns at once
  Next<KickedExit>(*vcpu);
}

TEST_F(EmuTest, UnsupportedInstructionEndsTheVmWithAClearError) {
  auto vcpu = Start(emu_test_guests::k_invalid);
  ASSERT_NE(vcpu, nullptr);
  GuestErrorExit error = Next<GuestErrorExit>(*vcpu);
  EXPECT_THAT(error.reason, HasSubstr("invalid instruction"));
  EXPECT_THAT(error.reason, HasSubstr("0f 0b"));
  EXPECT_THAT(Next<GuestErrorExit>(*vcpu).reason, HasSubstr("invalid instruction"));  // it stays dead
}

TEST_F(EmuTest, RefusesWhatItCannotDoYet) {
  EXPECT_EQ(accelerator_->CreateVcpu(1, std::nullopt).status().code(), absl::StatusCode::kUnimplemented);
  auto vcpu = Start(emu_test_guests::k_spin);
  ASSERT_NE(vcpu, nullptr);
  EXPECT_EQ(vcpu->InjectInterrupt(0x30).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(accelerator_->capabilities().name, "emu");
}

TEST_F(EmuTest, RegistersRoundTrip) {
  auto vcpu = Start(emu_test_guests::k_port_io);
  ASSERT_NE(vcpu, nullptr);
  absl::StatusOr<Registers> registers = vcpu->GetRegisters();
  ASSERT_TRUE(registers.ok());
  EXPECT_EQ(registers->rip, kLoadAddress + emu_test_guests::k_port_io);
  EXPECT_EQ(registers->rbx, kStartInfo);
  registers->rip = kLoadAddress + emu_test_guests::k_pvh_state;
  registers->rbx = 0x777;
  ASSERT_TRUE(vcpu->SetRegisters(*registers).ok());
  EXPECT_EQ(Next<PortIoExit>(*vcpu).value, 0x777u);
}

}  // namespace
}  // namespace xenkvm::accel
