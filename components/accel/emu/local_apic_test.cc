#include "components/accel/emu/local_apic.h"

#include "gtest/gtest.h"

namespace xenkvm::accel::emu {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

uint32_t Read(LocalApic& apic, uint32_t offset, absl::Time now = kT0) {
  return static_cast<uint32_t>(apic.Read(offset, 4, now));
}
LocalApic::WriteEffects Write(LocalApic& apic, uint32_t offset, uint32_t value, absl::Time now = kT0) {
  return apic.Write(offset, 4, value, now);
}
LocalApic Enabled(uint8_t id) {
  LocalApic apic(id);
  Write(apic, 0xf0, 0x1ff);
  return apic;
}

TEST(VectorBitsTest, HighestAcrossWordsAndTheRegisterWords) {
  VectorBits bits;
  EXPECT_FALSE(bits.Any());
  EXPECT_EQ(bits.Highest(), std::nullopt);
  for (uint8_t vector : {0, 31, 32, 63, 64, 100, 127, 128, 200, 255}) {
    bits.Set(vector);
    EXPECT_EQ(bits.Highest(), vector);
    EXPECT_TRUE(bits.Test(vector));
  }
  EXPECT_EQ(bits.Word32(0), 0x80000001u);  // vectors 0 and 31
  EXPECT_EQ(bits.Word32(1), 0x80000001u);  // 32 and 63
  EXPECT_EQ(bits.Word32(2), 0x1u);         // 64
  EXPECT_EQ(bits.Word32(3), 0x80000010u);  // 100 and 127
  EXPECT_EQ(bits.Word32(4), 0x1u);         // 128
  EXPECT_EQ(bits.Word32(5), 0u);
  EXPECT_EQ(bits.Word32(6), 0x100u);       // 200
  EXPECT_EQ(bits.Word32(7), 0x80000000u);  // 255
  bits.Clear(255);
  EXPECT_EQ(bits.Highest(), 200);
  bits.Assign(200, false);
  bits.Assign(129, true);
  EXPECT_EQ(bits.Highest(), 129);
  EXPECT_FALSE(bits.Test(130));
  bits.ClearAll();
  EXPECT_FALSE(bits.Any());
}

TEST(LocalApicTest, ResetStateAsTheSdmGivesIt) {
  LocalApic apic(3);
  EXPECT_EQ(Read(apic, 0x20), 3u << 24);
  EXPECT_EQ(Read(apic, 0x30), 0x50014u);  // version 0x14, six LVT entries
  EXPECT_EQ(Read(apic, 0xe0), 0xffffffffu);
  EXPECT_EQ(Read(apic, 0xf0), 0xffu);  // software-disabled
  for (uint32_t lvt = 0x320; lvt <= 0x370; lvt += 0x10) EXPECT_EQ(Read(apic, lvt), 0x10000u) << lvt;
  EXPECT_FALSE(apic.software_enabled());
  EXPECT_FALSE(apic.Accept(0x30, false));  // a disabled APIC takes no fixed interrupt
  EXPECT_EQ(apic.Read(0x21, 1, kT0), 0u);  // bytes within the register
  EXPECT_EQ(apic.Read(0x23, 1, kT0), 3u);
  EXPECT_EQ(apic.Read(0x24, 4, kT0), 0u);  // beyond the 32-bit register
}

TEST(LocalApicTest, PriorityOrdersDeliveryAndEoiEndsTheHighestInService) {
  LocalApic apic = Enabled(0);
  ASSERT_TRUE(apic.Accept(0x31, false));
  ASSERT_TRUE(apic.Accept(0x52, true));
  EXPECT_EQ(apic.Deliverable(), 0x52);
  apic.Acknowledge(0x52);
  EXPECT_EQ(Read(apic, 0x100 + 0x10 * (0x52 / 32)), 1u << (0x52 % 32));  // ISR
  EXPECT_EQ(Read(apic, 0x180 + 0x10 * (0x52 / 32)), 1u << (0x52 % 32));  // TMR: level
  EXPECT_EQ(Read(apic, 0xa0), 0x50u);                                   // PPR from the ISR
  EXPECT_EQ(apic.Deliverable(), std::nullopt);  // 0x31's class is below the one in service
  ASSERT_TRUE(apic.Accept(0x61, false));
  EXPECT_EQ(apic.Deliverable(), 0x61);  // a higher class nests
  apic.Acknowledge(0x61);
  LocalApic::WriteEffects first = Write(apic, 0xb0, 0);
  ASSERT_TRUE(first.ended.has_value());
  EXPECT_EQ(first.ended->vector, 0x61);
  EXPECT_FALSE(first.ended->level_triggered);
  LocalApic::WriteEffects second = Write(apic, 0xb0, 0);
  ASSERT_TRUE(second.ended.has_value());
  EXPECT_EQ(second.ended->vector, 0x52);
  EXPECT_TRUE(second.ended->level_triggered);
  EXPECT_FALSE(Write(apic, 0xb0, 0).ended.has_value());  // nothing in service
  EXPECT_EQ(apic.Deliverable(), 0x31);
  Write(apic, 0x80, 0x40);  // TPR masks classes up to 4
  EXPECT_EQ(apic.Deliverable(), std::nullopt);
  EXPECT_EQ(Read(apic, 0xa0), 0x40u);
}

TEST(LocalApicTest, IllegalVectorsLatchInTheEsrAndRaiseTheErrorLvt) {
  LocalApic apic = Enabled(0);
  Write(apic, 0x370, 0xfe);  // error LVT unmasked, vector 0xfe
  EXPECT_TRUE(apic.Accept(0x05, false));
  EXPECT_EQ(Read(apic, 0x280), 0u);  // not visible until the ESR is written
  Write(apic, 0x280, 0);
  EXPECT_EQ(Read(apic, 0x280), 0x40u);  // receive illegal vector
  EXPECT_EQ(apic.Deliverable(), 0xfe);
  Write(apic, 0x310, 1u << 24);
  EXPECT_FALSE(Write(apic, 0x300, 0x0003).ipi.has_value());  // a fixed IPI with vector 3
  Write(apic, 0x280, 0);
  EXPECT_EQ(Read(apic, 0x280), 0x20u);  // send illegal vector
  Write(apic, 0x280, 0);
  EXPECT_EQ(Read(apic, 0x280), 0u);
}

TEST(LocalApicTest, IcrWritesBecomeIpiRequests) {
  LocalApic apic = Enabled(0);
  Write(apic, 0x310, 0x01000000);
  LocalApic::WriteEffects init = Write(apic, 0x300, 0x0000c500);  // INIT, level, assert
  ASSERT_TRUE(init.ipi.has_value());
  EXPECT_EQ(init.ipi->mode, DeliveryMode::kInit);
  EXPECT_EQ(init.ipi->destination, 1);
  EXPECT_TRUE(init.ipi->assert);
  EXPECT_TRUE(init.ipi->level_triggered);
  LocalApic::WriteEffects sipi = Write(apic, 0x300, 0x00000699);
  ASSERT_TRUE(sipi.ipi.has_value());
  EXPECT_EQ(sipi.ipi->mode, DeliveryMode::kStartup);
  EXPECT_EQ(sipi.ipi->vector, 0x99);
  LocalApic::WriteEffects all = Write(apic, 0x300, 0x000c08f8);  // fixed 0xf8, logical, all but self
  ASSERT_TRUE(all.ipi.has_value());
  EXPECT_EQ(all.ipi->shorthand, IpiRequest::Shorthand::kAllExcludingSelf);
  EXPECT_TRUE(all.ipi->logical);
  EXPECT_EQ(Read(apic, 0x300) & (1u << 12), 0u);  // delivery status: idle
}

TEST(LocalApicTest, DestinationsPhysicalFlatClusterAndShorthands) {
  LocalApic apic = Enabled(2);
  IpiRequest request;
  request.destination = 2;
  EXPECT_TRUE(apic.IsDestination(request, 0));
  request.destination = 1;
  EXPECT_FALSE(apic.IsDestination(request, 0));
  request.destination = 0xff;
  EXPECT_TRUE(apic.IsDestination(request, 0));
  request.logical = true;
  Write(apic, 0xd0, 0x04000000);  // flat: logical ID bit 2
  request.destination = 0x05;
  EXPECT_TRUE(apic.IsDestination(request, 0));
  request.destination = 0x03;
  EXPECT_FALSE(apic.IsDestination(request, 0));
  Write(apic, 0xe0, 0x0fffffff);  // cluster model
  Write(apic, 0xd0, 0x12000000);  // cluster 1, bit 1
  request.destination = 0x12;
  EXPECT_TRUE(apic.IsDestination(request, 0));
  request.destination = 0x22;
  EXPECT_FALSE(apic.IsDestination(request, 0));
  request.shorthand = IpiRequest::Shorthand::kSelf;
  EXPECT_TRUE(apic.IsDestination(request, 2));
  EXPECT_FALSE(apic.IsDestination(request, 1));
  request.shorthand = IpiRequest::Shorthand::kAllExcludingSelf;
  EXPECT_FALSE(apic.IsDestination(request, 2));
  EXPECT_TRUE(apic.IsDestination(request, 1));
}

TEST(LocalApicTest, OneShotTimerCountsDownAndFiresOnce) {
  LocalApic apic = Enabled(0);
  Write(apic, 0x3e0, 0x3);           // divide by 16
  Write(apic, 0x320, 0x40);          // one-shot, vector 0x40
  EXPECT_TRUE(Write(apic, 0x380, 1000).timer_changed);  // 16 us
  ASSERT_TRUE(apic.TimerDeadline().has_value());
  EXPECT_EQ(*apic.TimerDeadline(), kT0 + absl::Microseconds(16));
  EXPECT_EQ(Read(apic, 0x390, kT0 + absl::Microseconds(8)), 500u);
  apic.ExpireTimer(kT0 + absl::Microseconds(15));
  EXPECT_EQ(apic.Deliverable(), std::nullopt);
  apic.ExpireTimer(kT0 + absl::Microseconds(16));
  EXPECT_EQ(apic.Deliverable(), 0x40);
  EXPECT_FALSE(apic.TimerDeadline().has_value());
  EXPECT_EQ(Read(apic, 0x390, kT0 + absl::Microseconds(30)), 0u);
}

TEST(LocalApicTest, PeriodicTimerRearmsWithoutDriftAndHasAFloor) {
  LocalApic apic = Enabled(0);
  Write(apic, 0x3e0, 0xb);           // divide by 1
  Write(apic, 0x320, 0x20041);       // periodic, vector 0x41
  Write(apic, 0x380, 1'000'000);     // 1 ms
  EXPECT_EQ(*apic.TimerDeadline(), kT0 + absl::Milliseconds(1));
  apic.ExpireTimer(kT0 + absl::Microseconds(1300));
  EXPECT_EQ(*apic.TimerDeadline(), kT0 + absl::Milliseconds(2));
  apic.ExpireTimer(kT0 + absl::Microseconds(5500));  // three periods missed: one interrupt
  EXPECT_EQ(*apic.TimerDeadline(), kT0 + absl::Milliseconds(6));
  EXPECT_EQ(Read(apic, 0x390, kT0 + absl::Microseconds(5750)), 250'000u);
  EXPECT_EQ(apic.Deliverable(), 0x41);
  Write(apic, 0x380, 10);  // 10 ns periodic: held at 200 us
  EXPECT_EQ(*apic.TimerDeadline(), kT0 + absl::Microseconds(200));
  Write(apic, 0x320, 0x30041);  // masked: counts, but fires nothing
  apic.Acknowledge(0x41);
  Write(apic, 0xb0, 0);
  apic.ExpireTimer(kT0 + absl::Milliseconds(1));
  EXPECT_EQ(apic.Deliverable(), std::nullopt);
  Write(apic, 0x380, 0);  // stopped
  EXPECT_FALSE(apic.TimerDeadline().has_value());
}

TEST(LocalApicTest, SoftwareDisableMasksEveryLvtAndResetKeepsTheId) {
  LocalApic apic = Enabled(7);
  Write(apic, 0x320, 0x40);
  Write(apic, 0xf0, 0xff);
  EXPECT_EQ(Read(apic, 0x320), 0x10040u);
  Write(apic, 0x320, 0x40);
  EXPECT_EQ(Read(apic, 0x320), 0x10040u);  // cannot be unmasked while disabled
  apic.Reset();
  EXPECT_EQ(apic.id(), 7);
  EXPECT_EQ(Read(apic, 0x320), 0x10000u);
}

}  // namespace
}  // namespace xenkvm::accel::emu
