#include "components/xen/grant_table.h"

#include <atomic>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kTableGfn = 0x10;   // where the guest maps frame 0
constexpr uint64_t kTableGfn1 = 0x11;  // and frame 1
constexpr uint64_t kDataGfn = 0x20;    // a page it grants

class GrantTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 0x100000}})).value());
    table_ = std::make_unique<GrantTable>(*memory_, 4);
  }
  memory::GuestAddress EntryAddress(uint32_t ref) {
    const uint64_t frame = ref / kGrantEntriesPerFrame == 0 ? kTableGfn : kTableGfn1;
    return memory::GuestAddress((frame << 12) + (ref % kGrantEntriesPerFrame) * sizeof(grant_entry_v1_t));
  }
  // The guest's gnttab_grant_foreign_access.
  void Grant(uint32_t ref, uint64_t gfn, uint16_t domid = 0, bool readonly = false) {
    grant_entry_v1_t entry{static_cast<uint16_t>(GTF_permit_access | (readonly ? GTF_readonly : 0)), domid,
                           static_cast<uint32_t>(gfn)};
    ASSERT_TRUE(memory_->WriteObject(EntryAddress(ref), entry).ok());
  }
  uint16_t Flags(uint32_t ref) { return memory_->ReadObject<grant_entry_v1_t>(EntryAddress(ref))->flags; }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<GrantTable> table_;
};

TEST_F(GrantTableTest, FramesAreMappedWithinTheLimitIntoGuestRam) {
  EXPECT_EQ(table_->frames(), 0u);
  EXPECT_EQ(table_->MapFrame(0, kTableGfn), 0);
  EXPECT_EQ(table_->frames(), 1u);
  EXPECT_EQ(table_->MapFrame(4, kTableGfn1), -XEN_EINVAL);        // beyond max_frames
  EXPECT_EQ(table_->MapFrame(1, 0x100000000ull), -XEN_EINVAL);    // not RAM
  EXPECT_EQ(table_->MapFrame(1, ~uint64_t{0}), -XEN_EINVAL);      // an address that wraps
  std::vector<uint64_t> gfns;
  EXPECT_EQ(table_->Setup(3, &gfns), GNTST_okay);
  EXPECT_THAT(gfns, ::testing::ElementsAre(kTableGfn, ~uint64_t{0}, ~uint64_t{0}));
  EXPECT_EQ(table_->Setup(5, &gfns), GNTST_general_error);
}

TEST_F(GrantTableTest, AMovedFrameKeepsItsEntries) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn1), 0);
  Grant(7, kDataGfn);  // writes at kTableGfn: not the table yet
  grant_entry_v1_t entry{GTF_permit_access, 0, static_cast<uint32_t>(kDataGfn)};
  ASSERT_TRUE(memory_->WriteObject(memory::GuestAddress((kTableGfn1 << 12) + 7 * 8), entry).ok());
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);  // moves: the entry comes along
  GrantTable::Mapping mapping;
  ASSERT_EQ(table_->Map(7, true, &mapping), GNTST_okay);
  EXPECT_EQ(mapping.gfn, kDataGfn);
  table_->Unmap(mapping);
}

TEST_F(GrantTableTest, ReservedEntriesGrantTheConsoleAndXenStoreRings) {
  table_->SetReservedEntries(0xfeff8, 0xfeff9);
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  auto console = memory_->ReadObject<grant_entry_v1_t>(EntryAddress(0));
  auto store = memory_->ReadObject<grant_entry_v1_t>(EntryAddress(1));
  EXPECT_EQ(console->flags, GTF_permit_access);
  EXPECT_EQ(console->frame, 0xfeff8u);
  EXPECT_EQ(store->domid, 0);
  EXPECT_EQ(store->frame, 0xfeff9u);
}

TEST_F(GrantTableTest, MapPinsAndTheLastUnmapReleases) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  Grant(8, kDataGfn);
  ASSERT_TRUE(memory_->WriteObject(memory::GuestAddress(kDataGfn << 12), uint32_t{0xfeedface}).ok());
  GrantTable::Mapping reader, writer;
  ASSERT_EQ(table_->Map(8, true, &reader), GNTST_okay);
  EXPECT_EQ(Flags(8), GTF_permit_access | GTF_reading);
  ASSERT_EQ(table_->Map(8, false, &writer), GNTST_okay);
  EXPECT_EQ(Flags(8), GTF_permit_access | GTF_reading | GTF_writing);
  ASSERT_EQ(writer.page.size(), 4096u);
  uint32_t word;
  std::memcpy(&word, reader.page.data(), sizeof(word));
  EXPECT_EQ(word, 0xfeedfaceu);
  table_->Unmap(writer);
  EXPECT_EQ(Flags(8), GTF_permit_access | GTF_reading);  // still read-mapped (XSA-230)
  table_->Unmap(reader);
  EXPECT_EQ(Flags(8), GTF_permit_access);
  EXPECT_EQ(table_->Statistics().active, 0u);
  table_->Unmap(reader);  // twice: ignored
  EXPECT_EQ(table_->Statistics().maps, 2u);
}

TEST_F(GrantTableTest, RefusesWhatWasNotGranted) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  GrantTable::Mapping mapping;
  EXPECT_EQ(table_->Map(kGrantEntriesPerFrame, true, &mapping), GNTST_bad_gntref);  // frame 1 not mapped
  EXPECT_EQ(table_->Map(4 * kGrantEntriesPerFrame, true, &mapping), GNTST_bad_gntref);  // beyond the table
  EXPECT_EQ(table_->Map(~0u, true, &mapping), GNTST_bad_gntref);
  EXPECT_EQ(table_->Map(9, true, &mapping), GNTST_general_error);  // an empty entry
  Grant(9, kDataGfn, /*domid=*/5);
  EXPECT_EQ(table_->Map(9, true, &mapping), GNTST_general_error);  // granted to another domain
  Grant(10, kDataGfn, 0, /*readonly=*/true);
  EXPECT_EQ(table_->Map(10, false, &mapping), GNTST_general_error);  // read-only grant, writable map
  EXPECT_EQ(Flags(10), GTF_permit_access | GTF_readonly);            // and nothing was pinned
  ASSERT_EQ(table_->Map(10, true, &mapping), GNTST_okay);
  table_->Unmap(mapping);
  Grant(11, 0x100000);  // a frame outside RAM
  EXPECT_EQ(table_->Map(11, true, &mapping), GNTST_general_error);
  EXPECT_EQ(Flags(11), GTF_permit_access);  // the pin was undone
  Grant(12, kTableGfn);  // the grant table's own frame
  EXPECT_EQ(table_->Map(12, false, &mapping), GNTST_general_error);
  grant_entry_v1_t transitive{GTF_transitive, 0, static_cast<uint32_t>(kDataGfn)};
  ASSERT_TRUE(memory_->WriteObject(EntryAddress(13), transitive).ok());
  EXPECT_EQ(table_->Map(13, true, &mapping), GNTST_general_error);
  EXPECT_EQ(table_->Statistics().refused, 9u);
}

TEST_F(GrantTableTest, AnEntryRewrittenWhileMappedDoesNotMoveTheMapping) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  Grant(14, kDataGfn);
  GrantTable::Mapping first, second;
  ASSERT_EQ(table_->Map(14, true, &first), GNTST_okay);
  Grant(14, kDataGfn + 1);  // the guest changes the frame under the backend
  ASSERT_EQ(table_->Map(14, true, &second), GNTST_okay);
  EXPECT_EQ(second.gfn, kDataGfn);
  table_->Unmap(first);
  table_->Unmap(second);
}

TEST_F(GrantTableTest, MappingsPerGrantAreBounded) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  Grant(15, kDataGfn);
  std::vector<GrantTable::Mapping> mappings(kMaxMappingsPerGrant);
  for (auto& mapping : mappings) ASSERT_EQ(table_->Map(15, true, &mapping), GNTST_okay);
  GrantTable::Mapping extra;
  EXPECT_EQ(table_->Map(15, true, &extra), GNTST_no_space);
  for (auto& mapping : mappings) table_->Unmap(mapping);
  EXPECT_EQ(Flags(15), GTF_permit_access);
}

// The guest flips its entry between granting and not, from another thread, while the backend
// maps: every map either succeeds with the granted frame or fails; never another frame.
TEST_F(GrantTableTest, AGuestFlippingItsEntryNeverGetsAnUngrantedFrameMapped) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  std::atomic<bool> stop{false};
  std::thread guest([&] {
    for (uint32_t i = 0; !stop.load(); ++i) {
      grant_entry_v1_t entry{static_cast<uint16_t>(i % 2 ? GTF_permit_access : GTF_invalid),
                             static_cast<uint16_t>(i % 3 == 0 ? 7 : 0), static_cast<uint32_t>(kDataGfn)};
      (void)memory_->WriteObject(EntryAddress(16), entry);
    }
  });
  int ok = 0;
  for (int i = 0; i < 20000; ++i) {
    GrantTable::Mapping mapping;
    if (table_->Map(16, true, &mapping) == GNTST_okay) {
      ++ok;
      EXPECT_EQ(mapping.gfn, kDataGfn);
      table_->Unmap(mapping);
    }
  }
  stop.store(true);
  guest.join();
  EXPECT_EQ(table_->Statistics().active, 0u);
  (void)ok;
}

// Version 2: 16-byte entries, GTF_reading/GTF_writing in the status frame; sub-page and
// transitive grants cannot be mapped; the version stays while a grant is mapped.
class GrantTableV2Test : public GrantTableTest {
 protected:
  static constexpr uint64_t kStatusGfn = 0x30;
  void SetUp() override {
    GrantTableTest::SetUp();
    ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
    ASSERT_EQ(table_->MapStatusFrame(0, kStatusGfn), -XEN_EINVAL);  // v1: no status frames
    ASSERT_EQ(table_->SetVersion(2), 0);
    ASSERT_EQ(table_->MapStatusFrame(0, kStatusGfn), 0);
  }
  void GrantV2(uint32_t ref, uint64_t gfn, uint16_t flags = GTF_permit_access, uint16_t domid = 0,
               uint16_t page_off = 0, uint16_t length = 0) {
    grant_entry_v2_t entry{};
    entry.sub_page.hdr = {flags, domid};
    entry.sub_page.page_off = page_off;
    entry.sub_page.length = length;
    entry.sub_page.frame = gfn;
    ASSERT_TRUE(memory_->WriteObject(memory::GuestAddress((kTableGfn << 12) + ref * 16), entry).ok());
  }
  uint16_t Status(uint32_t ref) { return *memory_->ReadObject<uint16_t>(memory::GuestAddress((kStatusGfn << 12) + ref * 2)); }
};

TEST_F(GrantTableV2Test, MapsThroughTheStatusFrame) {
  EXPECT_EQ(table_->version(), 2u);
  GrantV2(10, kDataGfn);
  GrantTable::Mapping mapping;
  ASSERT_EQ(table_->Map(10, false, &mapping), GNTST_okay);
  EXPECT_EQ(mapping.gfn, kDataGfn);
  EXPECT_EQ(Status(10), GTF_reading | GTF_writing);
  EXPECT_EQ(table_->SetVersion(1), -XEN_EBUSY);  // a grant is mapped
  table_->Unmap(mapping);
  EXPECT_EQ(Status(10), 0);
  EXPECT_EQ(table_->Map(300, false, &mapping), GNTST_bad_gntref);  // frame 1 (256 entries a frame) not placed
  GrantV2(11, kDataGfn, GTF_permit_access | GTF_readonly);
  EXPECT_EQ(table_->Map(11, false, &mapping), GNTST_general_error);
  GrantV2(12, kDataGfn, GTF_permit_access | GTF_sub_page, 0, 0, 512);
  EXPECT_EQ(table_->Map(12, true, &mapping), GNTST_general_error);  // a sub-page cannot be mapped
  GrantV2(13, kDataGfn, GTF_transitive);
  EXPECT_EQ(table_->Map(13, true, &mapping), GNTST_general_error);
  EXPECT_EQ(Status(12) | Status(13), 0);
  std::vector<uint64_t> gfns;
  EXPECT_EQ(table_->StatusFrames(1, &gfns), GNTST_okay);
  EXPECT_THAT(gfns, ::testing::ElementsAre(kStatusGfn));
  EXPECT_EQ(table_->StatusFrames(2, &gfns), GNTST_general_error);  // one grant frame needs one status frame
  EXPECT_TRUE(table_->HoldsFrameAt(kStatusGfn));
  ASSERT_EQ(table_->SetVersion(1), 0);
  EXPECT_FALSE(table_->HoldsFrameAt(kStatusGfn));
  EXPECT_EQ(table_->SetVersion(3), -XEN_EINVAL);
}

TEST_F(GrantTableV2Test, CopiesStayInsideTheGrant) {
  ASSERT_TRUE(memory_->Write(memory::GuestAddress((kDataGfn << 12) + 600), std::vector<uint8_t>{1, 2, 3, 4}).ok());
  GrantV2(20, kDataGfn, GTF_permit_access | GTF_sub_page, 0, 512, 256);
  std::vector<uint8_t> out(4);
  EXPECT_EQ(table_->Copy(20, 600, out, /*to_guest=*/false), GNTST_okay);
  EXPECT_THAT(out, ::testing::ElementsAre(1, 2, 3, 4));
  EXPECT_EQ(table_->Copy(20, 766, out, false), GNTST_general_error);  // past the sub-page (512..767)
  EXPECT_EQ(table_->Copy(20, 500, out, false), GNTST_general_error);  // before it
  EXPECT_EQ(table_->Copy(20, 4094, out, false), GNTST_bad_copy_arg);  // across the page
  EXPECT_EQ(Status(20), 0);                                           // pinned only while copying
  GrantV2(21, kDataGfn, GTF_permit_access | GTF_readonly);
  std::vector<uint8_t> in = {9, 9};
  EXPECT_EQ(table_->Copy(21, 0, in, /*to_guest=*/true), GNTST_general_error);  // read-only
  EXPECT_EQ(table_->Copy(21, 0, out, false), GNTST_okay);
  GrantV2(22, kDataGfn, GTF_permit_access, /*domid=*/5);
  EXPECT_EQ(table_->Copy(22, 0, out, false), GNTST_general_error);  // granted to another domain
  // A copy while the grant is mapped leaves the mapping's status bits alone.
  GrantV2(23, kDataGfn);
  GrantTable::Mapping mapping;
  ASSERT_EQ(table_->Map(23, true, &mapping), GNTST_okay);
  EXPECT_EQ(table_->Copy(23, 0, in, true), GNTST_okay);
  EXPECT_EQ(Status(23), GTF_reading);
  table_->Unmap(mapping);
  EXPECT_EQ(Status(23), 0);
}

TEST_F(GrantTableTest, VersionOneCopies) {
  ASSERT_EQ(table_->MapFrame(0, kTableGfn), 0);
  Grant(5, kDataGfn);
  std::vector<uint8_t> in = {7, 7, 7};
  EXPECT_EQ(table_->Copy(5, 100, in, /*to_guest=*/true), GNTST_okay);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(memory::GuestAddress((kDataGfn << 12) + 101)), 7);
  EXPECT_EQ(Flags(5), GTF_permit_access);  // the pin went with the copy
  EXPECT_EQ(table_->Copy(600, 0, in, true), GNTST_bad_gntref);
  Grant(6, kTableGfn);  // the table itself
  EXPECT_EQ(table_->Copy(6, 0, in, true), GNTST_general_error);
}

}  // namespace
}  // namespace xenkvm::xen
