// memory_op's reservation ops (Linux's balloon driver): current/maximum reservation, giving frames
// back (they read as zeros and leave the host's resident memory), refilling them, Xen's "extents
// done" answers, and the pins between grants and the balloon.
#include <fstream>
#include <string>

#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kExtents = kArg + 0x100;  // the extent list
constexpr uint64_t kRamPages = (16 << 20) >> 12;

class ReservationTest : public ShimTest {
 protected:
  // A reservation op on `gfns` (64-bit or 32-bit layout); the number of extents done.
  int64_t Reserve(uint64_t op, std::vector<uint64_t> gfns, uint32_t order = 0, bool long_mode = true,
                  uint16_t domid = DOMID_SELF, uint64_t start_extent = 0) {
    uint8_t reservation[32] = {};
    const size_t word = long_mode ? 8 : 4;
    const uint64_t handle = kExtents;
    const uint64_t count = gfns.size();
    std::memcpy(reservation, &handle, word);
    std::memcpy(reservation + word, &count, word);
    std::memcpy(reservation + 2 * word, &order, 4);
    std::memcpy(reservation + 2 * word + 8, &domid, 2);
    EXPECT_TRUE(memory_->Write(GuestAddress(kArg), reservation).ok());
    for (size_t i = 0; i < gfns.size(); ++i) {
      EXPECT_TRUE(memory_->Write(GuestAddress(kExtents + i * word),
                                 std::span(reinterpret_cast<const uint8_t*>(&gfns[i]), word))
                      .ok());
    }
    return Call(__HYPERVISOR_memory_op, {op | (start_extent << 6), kArg}, long_mode);
  }
  int64_t Pages(uint64_t op, uint16_t domid = DOMID_SELF) {
    Put(domid);
    return Call(__HYPERVISOR_memory_op, {op, kArg});
  }
  void Fill(uint64_t gfn, uint8_t byte) { ASSERT_TRUE(memory_->Write(GuestAddress(gfn << 12), std::vector<uint8_t>(4096, byte)).ok()); }
  bool Zeroed(uint64_t gfn) {
    std::vector<uint8_t> page(4096, 0xff);
    EXPECT_TRUE(memory_->Read(GuestAddress(gfn << 12), page).ok());
    return std::all_of(page.begin(), page.end(), [](uint8_t b) { return b == 0; });
  }
};

// The shared memory this process has resident (guest RAM is a memfd), in KiB.
uint64_t RssShmemKib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stoull(line.substr(9));
  }
  return 0;
}

TEST_F(ReservationTest, CurrentAndMaximumReservation) {
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages));
  EXPECT_EQ(Pages(XENMEM_maximum_reservation), static_cast<int64_t>(kRamPages));
  EXPECT_EQ(Pages(XENMEM_current_reservation, 7), E(XEN_ESRCH));
  Put(uint16_t{DOMID_SELF});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_current_reservation | (1 << 6), kArg}), E(XEN_EINVAL));
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_current_reservation, 0xfffffff000}), E(XEN_EFAULT));
}

TEST_F(ReservationTest, GivenBackFramesReadZerosAndCanBeRefilled) {
  Fill(0x800, 0x5a);
  Fill(0x801, 0x5a);
  Fill(0x802, 0x5a);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x800, 0x801}), 2);
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages - 2));
  EXPECT_TRUE(Zeroed(0x800));
  EXPECT_TRUE(Zeroed(0x801));
  EXPECT_FALSE(Zeroed(0x802));
  EXPECT_TRUE(shim_->reservation().IsGivenBack(0x800));
  // Xen's answers are extents done, stopping at the first that fails: given back already,
  // outside RAM, unaligned for the order, an order beyond 9, another domain.
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x802, 0x800, 0x803}), 1);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x100000}), 0);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x905}, 1), 0);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0xa00}, 10), 0);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0xa00}, 0, true, 9), 0);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0xa00, 0xa01}, 0, true, DOMID_SELF, /*start_extent=*/1), 2);
  EXPECT_FALSE(shim_->reservation().IsGivenBack(0xa00));
  EXPECT_TRUE(shim_->reservation().IsGivenBack(0xa01));
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0xb00}, 9), 0);  // unaligned 2 MiB extent
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x800}, 9), 0);  // holds a given-back frame
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages - 4));

  // A guest that writes into a given-back frame anyway gets a fresh zeroed frame at the refill.
  Fill(0x800, 0x77);
  EXPECT_EQ(Reserve(XENMEM_populate_physmap, {0x800, 0x801}), 2);
  EXPECT_TRUE(Zeroed(0x800));
  EXPECT_EQ(Reserve(XENMEM_increase_reservation, {0x802, 0x803}), 2);  // translated: refills too
  EXPECT_TRUE(Zeroed(0x802));
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages - 1));  // 0xa01 still out
  EXPECT_EQ(Reserve(XENMEM_populate_physmap, {0x200000}), 0);  // outside RAM: xenkvm's RAM is fixed
}

TEST_F(ReservationTest, ThirtyTwoBitLayout) {
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x900, 0x902}, 1, /*long_mode=*/false), 2);
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages - 4));
  EXPECT_EQ(Reserve(XENMEM_populate_physmap, {0x900, 0x902}, 1, /*long_mode=*/false), 2);
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages));
}

TEST_F(ReservationTest, TheHostGetsTheMemoryBack) {
  constexpr uint64_t kFirst = 0x400, kPages = 2048;  // 8 MiB
  ASSERT_TRUE(memory_->Write(GuestAddress(kFirst << 12), std::vector<uint8_t>(kPages << 12, 1)).ok());
  const uint64_t touched = RssShmemKib();
  std::vector<uint64_t> extents;
  for (uint64_t gfn = kFirst; gfn < kFirst + kPages; gfn += 512) extents.push_back(gfn);
  ASSERT_EQ(Reserve(XENMEM_decrease_reservation, extents, 9), static_cast<int64_t>(extents.size()));
  const uint64_t given_back = RssShmemKib();
  EXPECT_GE(touched - given_back, 7u << 10) << "RssShmem " << touched << " KiB -> " << given_back << " KiB";
}

// With a memory map, the reservation is its RAM: reserved frames (here the legacy hole, and a
// partial frame) are not the guest's to give back.
TEST_F(ReservationTest, OnlyTheMapsRamCanBeGivenBack) {
  TearDown();
  XenConfig config;
  config.memory_map = {{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, (16 << 20) - 0x100000, 1}};
  Build(config);
  EXPECT_EQ(Pages(XENMEM_current_reservation), static_cast<int64_t>(kRamPages - 0x60 - 1));
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x9f}), 0);  // partly reserved
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0xa0}), 0);  // the legacy hole
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x9e, 0x100}), 2);
}

TEST_F(ReservationTest, GrantsAndXenPagesPinTheirFrames) {
  MapSharedInfo();
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {kSharedInfo >> 12}), 0);  // Xen's page is there
  ASSERT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 0, 0x40), 0);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x40}), 0);  // a grant-table frame
  // Entry 10 grants frame 0x300 to the backend: mapped, it cannot be given back.
  ASSERT_TRUE(memory_->WriteObject(GuestAddress((0x40 << 12) + 10 * 8), grant_entry_v1_t{GTF_permit_access, 0, 0x300}).ok());
  GrantTable::Mapping mapping;
  ASSERT_EQ(shim_->grant_table().Map(10, false, &mapping), GNTST_okay);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x300}), 0);
  shim_->grant_table().Unmap(mapping);
  EXPECT_EQ(Reserve(XENMEM_decrease_reservation, {0x300}), 1);
  // Given back, it cannot be mapped; refilled, it can.
  EXPECT_EQ(shim_->grant_table().Map(10, false, &mapping), GNTST_bad_page);
  EXPECT_EQ(Reserve(XENMEM_populate_physmap, {0x300}), 1);
  ASSERT_EQ(shim_->grant_table().Map(10, false, &mapping), GNTST_okay);
  shim_->grant_table().Unmap(mapping);
}

}  // namespace
}  // namespace xenkvm::xen
