#include "components/xenbus/guest_order.h"

#include <functional>

#include "components/accel/emu/emu_accelerator.h"
#include "components/memory/guest_memory.h"
#include "gtest/gtest.h"

namespace xenkvm::xenbus {
namespace {

// A check that sees the other side's index only on its second look (its store was still in the
// vCPU's store buffer the first time).
struct SecondLook {
  int looks = 0;
  bool operator()() { return ++looks >= 2; }
};

TEST(GuestOrderTest, AnEmulatedGuestIsLookedAtAgainWhileStopped) {
  auto memory = std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 1 << 20}})).value();
  std::unique_ptr<accel::Accelerator> emu = std::move(accel::CreateEmuAccelerator(memory)).value();
  SecondLook check;
  EXPECT_TRUE(GuestOrder(emu.get()).Confirm(std::ref(check)));
  EXPECT_EQ(check.looks, 2);
  SecondLook first_time_right{1};
  EXPECT_TRUE(GuestOrder(emu.get()).Confirm(std::ref(first_time_right)));
  EXPECT_EQ(first_time_right.looks, 2);  // one look: it said yes
}

TEST(GuestOrderTest, WithoutAGuestOneLookDecides) {
  SecondLook check;
  EXPECT_FALSE(GuestOrder(nullptr).Confirm(std::ref(check)));
  EXPECT_EQ(check.looks, 1);
}

}  // namespace
}  // namespace xenkvm::xenbus
