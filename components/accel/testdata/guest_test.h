// A test fixture that loads the test guests (emu/testdata/guests.S, linked at 1 MiB) into 2 MiB of
// guest memory and runs them on an accelerator a subclass creates: the same guest code serves the
// emu and the kvm backends' tests.
#ifndef XENKVM_COMPONENTS_ACCEL_TESTDATA_GUEST_TEST_H_
#define XENKVM_COMPONENTS_ACCEL_TESTDATA_GUEST_TEST_H_

#include <memory>
#include <thread>

#include "absl/time/clock.h"
#include "components/accel/accelerator.h"
#include "components/accel/emu/testdata/guests.h"
#include "gtest/gtest.h"

namespace xenkvm::accel::testing {

inline constexpr uint32_t kLoadAddress = 0x100000;
inline constexpr uint32_t kStartInfo = 0x5000;

class GuestTest : public ::testing::Test {
 protected:
  virtual absl::StatusOr<std::unique_ptr<Accelerator>> CreateAccelerator(
      const memory::GuestMemory& memory) = 0;

  void SetUp() override {
    absl::StatusOr<memory::GuestMemory> created =
        memory::GuestMemory::Create({{memory::GuestAddress(0), 2 << 20}});
    ASSERT_TRUE(created.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(created).value());
    ASSERT_TRUE(memory_->Write(memory::GuestAddress(kLoadAddress), emu_test_guests::kText).ok());
    absl::StatusOr<std::unique_ptr<Accelerator>> accelerator = CreateAccelerator(*memory_);
    ASSERT_TRUE(accelerator.ok()) << accelerator.status();
    accelerator_ = std::move(accelerator).value();
  }

  // vCPU `id` entering the guest at `label` in the PVH state.
  std::unique_ptr<Vcpu> Start(unsigned label, uint32_t id = 0) {
    absl::StatusOr<std::unique_ptr<Vcpu>> vcpu =
        accelerator_->CreateVcpu(id, PvhEntry{kLoadAddress + label, kStartInfo});
    EXPECT_TRUE(vcpu.ok()) << vcpu.status();
    return vcpu.ok() ? std::move(vcpu).value() : nullptr;
  }

  template <typename E>
  static E Next(Vcpu& vcpu) {
    absl::StatusOr<Exit> exit = vcpu.Run();
    EXPECT_TRUE(exit.ok()) << exit.status();
    if (!exit.ok() || !std::holds_alternative<E>(*exit)) {
      ADD_FAILURE() << "unexpected exit, variant index " << (exit.ok() ? exit->index() : -1)
                    << (exit.ok() && std::holds_alternative<GuestErrorExit>(*exit)
                            ? ": " + std::get<GuestErrorExit>(*exit).reason
                            : "")
                    << (exit.ok() && std::holds_alternative<ShutdownExit>(*exit)
                            ? ": " + std::get<ShutdownExit>(*exit).reason
                            : "");
      return E{};
    }
    return std::get<E>(*exit);
  }

  // Runs `vcpu` on another thread, injects `vector` once the guest has had time to settle (halt or
  // spin), and returns the exit the run ended with.
  static Exit RunAndInject(Vcpu& vcpu, uint8_t vector) {
    absl::StatusOr<Exit> exit;
    std::thread runner([&] { exit = vcpu.Run(); });
    absl::SleepFor(absl::Milliseconds(30));
    absl::Status injected = vcpu.InjectInterrupt(vector);
    EXPECT_TRUE(injected.ok()) << injected;
    if (!injected.ok()) vcpu.Kick();
    runner.join();
    EXPECT_TRUE(exit.ok()) << exit.status();
    return exit.ok() ? *exit : Exit{GuestErrorExit{"run failed"}};
  }

  // The string_io guest: `rep outsb` of three bytes and `rep insb` of two, one exit per item.
  static void ExpectStringPortIo(Vcpu& vcpu) {
    for (uint32_t expected : {1u, 2u, 3u}) {
      PortIoExit out = Next<PortIoExit>(vcpu);
      EXPECT_EQ(out.port, 0x10);
      EXPECT_EQ(out.value, expected);
    }
    for (uint32_t value : {0xaau, 0xbbu}) {
      EXPECT_EQ(Next<PortIoExit>(vcpu).port, 0x11);
      ASSERT_TRUE(vcpu.Complete(value).ok());
    }
    EXPECT_EQ(Next<PortIoExit>(vcpu).value, 0xbbaau);
  }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<Accelerator> accelerator_;
};

}  // namespace xenkvm::accel::testing

#endif  // XENKVM_COMPONENTS_ACCEL_TESTDATA_GUEST_TEST_H_
