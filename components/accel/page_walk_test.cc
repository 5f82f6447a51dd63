#include "components/accel/page_walk.h"

#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

using memory::GuestAddress;

TEST(PageWalkTest, PagingOffIsIdentity) {
  absl::StatusOr<memory::GuestMemory> memory = memory::GuestMemory::Create({{GuestAddress(0), 1 << 20}});
  ASSERT_TRUE(memory.ok());
  EXPECT_EQ(*TranslateLinear(*memory, {0x11, 0, 0, 0}, 0x12345), 0x12345u);
}

TEST(PageWalkTest, FourLevelWith4KiBAnd2MiBPages) {
  absl::StatusOr<memory::GuestMemory> memory = memory::GuestMemory::Create({{GuestAddress(0), 1 << 20}});
  ASSERT_TRUE(memory.ok());
  // PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000: [0] = 2 MiB page at 0x200000; [1] -> PT 0x4000.
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(0x1000), 0x2003).ok());
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(0x2000), 0x3003).ok());
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(0x3000), 0x200083).ok());
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(0x3008), 0x4003).ok());
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(0x4000 + 5 * 8), 0x9000 | 3).ok());
  PagingState paging{0x80000011, 0x1000, 0x20, 0x500};
  EXPECT_EQ(*TranslateLinear(*memory, paging, 0x1234), 0x201234u);
  EXPECT_EQ(*TranslateLinear(*memory, paging, 0x200000 + 5 * 4096 + 0x10), 0x9010u);
  EXPECT_EQ(TranslateLinear(*memory, paging, 0x200000 + 6 * 4096).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(TranslateLinear(*memory, paging, 0x8000000000).status().code(), absl::StatusCode::kNotFound);
}

TEST(PageWalkTest, ThirtyTwoBitPaging) {
  absl::StatusOr<memory::GuestMemory> memory = memory::GuestMemory::Create({{GuestAddress(0), 1 << 20}});
  ASSERT_TRUE(memory.ok());
  ASSERT_TRUE(memory->WriteObject<uint32_t>(GuestAddress(0x1000), 0x2003).ok());          // PDE 0
  ASSERT_TRUE(memory->WriteObject<uint32_t>(GuestAddress(0x2000 + 3 * 4), 0x7003).ok());  // PTE 3
  ASSERT_TRUE(memory->WriteObject<uint32_t>(GuestAddress(0x1004), 0x400083).ok());        // 4 MiB
  PagingState paging{0x80000011, 0x1000, 0x10, 0};
  EXPECT_EQ(*TranslateLinear(*memory, paging, 0x3abc), 0x7abcu);
  EXPECT_EQ(*TranslateLinear(*memory, paging, 0x400123), 0x400123u);
  EXPECT_FALSE(TranslateLinear(*memory, paging, 0x800000).ok());
}

}  // namespace
}  // namespace xenkvm::accel
