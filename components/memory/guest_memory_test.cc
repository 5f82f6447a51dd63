#include "components/memory/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <cstring>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/huge_pages.h"

namespace xenkvm::memory {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

// Two regions with a 1 MiB gap: [0, 1 MiB) and [2 MiB, 3 MiB).
GuestMemory TwoRegions() {
  absl::StatusOr<GuestMemory> memory = GuestMemory::Create(
      {{GuestAddress(2 * kMiB), kMiB}, {GuestAddress(0), kMiB}});  // deliberately unsorted
  EXPECT_TRUE(memory.ok()) << memory.status();
  return std::move(memory).value();
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(GuestAddressTest, Arithmetic) {
  GuestAddress address(0x12345);
  EXPECT_EQ(address.gfn(), 0x12u);
  EXPECT_EQ(address.page_offset(), 0x345u);
  EXPECT_EQ(GuestAddress::FromGfn(0xfeff8).value(), 0xfeff8000u);
  EXPECT_EQ(address.CheckedAdd(0x10)->value(), 0x12355u);
  EXPECT_FALSE(GuestAddress(UINT64_MAX).CheckedAdd(1).has_value());
  EXPECT_TRUE(GuestAddress(UINT64_MAX).CheckedAdd(0).has_value());
  EXPECT_EQ(address.ToString(), "0x12345");
  EXPECT_LT(GuestAddress(1), GuestAddress(2));
}

TEST(GuestMemoryTest, CreateKeepsRegionsSorted) {
  GuestMemory memory = TwoRegions();
  ASSERT_EQ(memory.regions().size(), 2u);
  EXPECT_EQ(memory.regions()[0].start().value(), 0u);
  EXPECT_EQ(memory.regions()[1].start().value(), 2 * kMiB);
  EXPECT_EQ(memory.total_size(), 2 * kMiB);
  EXPECT_EQ(memory.FindRegion(GuestAddress(kMiB - 1)), &memory.regions()[0]);
  EXPECT_EQ(memory.FindRegion(GuestAddress(kMiB)), nullptr);
  EXPECT_EQ(memory.FindRegion(GuestAddress(3 * kMiB - 1)), &memory.regions()[1]);
  EXPECT_EQ(memory.FindRegion(GuestAddress(3 * kMiB)), nullptr);
}

TEST(GuestMemoryTest, CreateRefusesBadLayouts) {
  auto code_and_message = [](std::vector<RegionSpec> specs) {
    absl::StatusOr<GuestMemory> memory = GuestMemory::Create(specs);
    EXPECT_FALSE(memory.ok());
    return Message(memory.status());
  };
  EXPECT_THAT(code_and_message({}), HasSubstr("no regions"));
  EXPECT_THAT(code_and_message({{GuestAddress(0), 0}}), HasSubstr("empty"));
  EXPECT_THAT(code_and_message({{GuestAddress(0x800), kPageSize}}), HasSubstr("aligned"));
  EXPECT_THAT(code_and_message({{GuestAddress(0), 100}}), HasSubstr("aligned"));
  EXPECT_THAT(code_and_message({{GuestAddress(UINT64_MAX - kPageSize + 1), 2 * kPageSize}}),
              HasSubstr("wraps"));
  EXPECT_THAT(code_and_message({{GuestAddress(0), 2 * kPageSize}, {GuestAddress(kPageSize), kPageSize}}),
              HasSubstr("overlaps"));
}

TEST(GuestMemoryTest, ReadWriteRoundTrip) {
  GuestMemory memory = TwoRegions();
  std::array<uint8_t, 5> out = {1, 2, 3, 4, 5};
  ASSERT_TRUE(memory.Write(GuestAddress(2 * kMiB + 100), out).ok());
  std::array<uint8_t, 5> in{};
  ASSERT_TRUE(memory.Read(GuestAddress(2 * kMiB + 100), in).ok());
  EXPECT_EQ(in, out);

  struct Pair {
    uint32_t a;
    uint64_t b;
  };
  ASSERT_TRUE(memory.WriteObject(GuestAddress(kMiB - sizeof(Pair)), Pair{7, 9}).ok());
  absl::StatusOr<Pair> pair = memory.ReadObject<Pair>(GuestAddress(kMiB - sizeof(Pair)));
  ASSERT_TRUE(pair.ok());
  EXPECT_EQ(pair->a, 7u);
  EXPECT_EQ(pair->b, 9u);

  ASSERT_TRUE(memory.Zero(GuestAddress(2 * kMiB + 100), 5).ok());
  ASSERT_TRUE(memory.Read(GuestAddress(2 * kMiB + 100), in).ok());
  EXPECT_EQ(in, (std::array<uint8_t, 5>{}));
}

TEST(GuestMemoryTest, RingAccessWrapsAtTheRingsEnd) {
  GuestMemory memory = TwoRegions();
  const GuestAddress ring(0x1000);
  const std::array<uint8_t, 6> out = {1, 2, 3, 4, 5, 6};
  // Free-running index 0xfffffffe in an 8-byte ring: position 6, so 2 bytes at the end, 4 at the start.
  ASSERT_TRUE(memory.WriteRing(ring, 8, 0xfffffffeu, out).ok());
  std::array<uint8_t, 8> raw{};
  ASSERT_TRUE(memory.Read(ring, raw).ok());
  EXPECT_EQ(raw, (std::array<uint8_t, 8>{3, 4, 5, 6, 0, 0, 1, 2}));
  std::array<uint8_t, 6> in{};
  ASSERT_TRUE(memory.ReadRing(ring, 8, 0xfffffffeu, in).ok());
  EXPECT_EQ(in, out);
  std::array<uint8_t, 9> too_long{};
  EXPECT_FALSE(memory.ReadRing(ring, 8, 0, too_long).ok());
  EXPECT_FALSE(memory.WriteRing(ring, 0, 0, out).ok());
  EXPECT_FALSE(memory.ReadRing(GuestAddress(kMiB - 4), 8, 2, in).ok());  // runs off the region
}

TEST(GuestMemoryTest, AccessCrossingTheEndOfARegionIsRefused) {
  GuestMemory memory = TwoRegions();
  std::array<uint8_t, 8> buffer{};
  // The last 8 bytes are fine; one byte further is not.
  EXPECT_TRUE(memory.Read(GuestAddress(kMiB - 8), buffer).ok());
  absl::Status status = memory.Read(GuestAddress(kMiB - 7), buffer);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(Message(status), HasSubstr("0xffff9"));
  EXPECT_THAT(Message(status), HasSubstr("crosses the end"));
  EXPECT_FALSE(memory.Write(GuestAddress(3 * kMiB - 7), buffer).ok());
  EXPECT_FALSE(memory.ReadObject<uint64_t>(GuestAddress(kMiB - 4)).ok());
  EXPECT_FALSE(memory.Span(GuestAddress(0), kMiB + 1).ok());
}

TEST(GuestMemoryTest, AccessInTheGapIsRefused) {
  GuestMemory memory = TwoRegions();
  std::array<uint8_t, 1> byte{};
  absl::Status status = memory.Read(GuestAddress(kMiB + 5), byte);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(Message(status), HasSubstr("outside guest memory"));
  EXPECT_FALSE(memory.Write(GuestAddress(2 * kMiB - 1), byte).ok());  // last gap byte
  EXPECT_FALSE(memory.HostAddress(GuestAddress(10 * kMiB), 1).ok());  // beyond every region
  // Spanning from the first region across the whole gap into the second.
  std::vector<uint8_t> big(2 * kMiB);
  EXPECT_FALSE(memory.Read(GuestAddress(kMiB / 2), big).ok());
}

TEST(GuestMemoryTest, AdjacentRegionsDoNotJoin) {
  absl::StatusOr<GuestMemory> memory =
      GuestMemory::Create({{GuestAddress(0), kPageSize}, {GuestAddress(kPageSize), kPageSize}});
  ASSERT_TRUE(memory.ok());
  std::array<uint8_t, 2> buffer{};
  EXPECT_TRUE(memory->Read(GuestAddress(kPageSize - 2), buffer).ok());
  EXPECT_FALSE(memory->Read(GuestAddress(kPageSize - 1), buffer).ok());
}

TEST(GuestMemoryTest, WrappingAccessIsRefused) {
  absl::StatusOr<GuestMemory> memory =
      GuestMemory::Create({{GuestAddress(UINT64_MAX - kPageSize + 1), kPageSize}});
  ASSERT_TRUE(memory.ok()) << memory.status();
  std::array<uint8_t, 8> buffer{};
  EXPECT_TRUE(memory->Read(GuestAddress(UINT64_MAX - 7), buffer).ok());  // the top 8 bytes
  absl::Status status = memory->Read(GuestAddress(UINT64_MAX - 3), buffer);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(Message(status), HasSubstr("wraps"));
  EXPECT_FALSE(memory->HostAddress(GuestAddress(UINT64_MAX), UINT64_MAX).ok());
  EXPECT_FALSE(memory->IsValidRange(GuestAddress(1), UINT64_MAX));
}

TEST(GuestMemoryTest, ZeroLengthAccessIsRefused) {
  GuestMemory memory = TwoRegions();
  absl::Status status = memory.Read(GuestAddress(0), std::span<uint8_t>());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("zero-length"));
  EXPECT_FALSE(memory.Write(GuestAddress(0), std::span<const uint8_t>()).ok());
  EXPECT_FALSE(memory.Span(GuestAddress(0), 0).ok());
  EXPECT_FALSE(memory.Zero(GuestAddress(0), 0).ok());
  EXPECT_FALSE(memory.IsValidRange(GuestAddress(0), 0));
}

TEST(GuestMemoryTest, SpanAndHostAddressAreZeroCopy) {
  GuestMemory memory = TwoRegions();
  absl::StatusOr<std::span<uint8_t>> span = memory.Span(GuestAddress(2 * kMiB + 16), 4);
  ASSERT_TRUE(span.ok());
  (*span)[0] = 0xab;
  EXPECT_EQ(*memory.ReadObject<uint8_t>(GuestAddress(2 * kMiB + 16)), 0xab);
  EXPECT_EQ(*memory.HostAddress(GuestAddress(2 * kMiB + 16), 1), span->data());
}

TEST(GuestMemoryTest, MemfdSharesTheSameBytes) {
  GuestMemory memory = TwoRegions();
  const GuestRegion& region = memory.regions()[1];
  void* other = ::mmap(nullptr, region.size(), PROT_READ, MAP_SHARED, region.memfd(), 0);
  ASSERT_NE(other, MAP_FAILED);
  ASSERT_TRUE(memory.WriteObject<uint32_t>(GuestAddress(2 * kMiB + 64), 0xdeadbeef).ok());
  EXPECT_EQ(*reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(other) + 64), 0xdeadbeefu);
  ::munmap(other, region.size());
}

TEST(GuestMemoryTest, AtomicsRefuseMisalignedAndOutOfRange) {
  GuestMemory memory = TwoRegions();
  absl::StatusOr<uint32_t> misaligned = memory.AtomicLoad<uint32_t>(GuestAddress(2));
  EXPECT_EQ(misaligned.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(misaligned.status()), HasSubstr("aligned"));
  EXPECT_FALSE(memory.AtomicStore<uint64_t>(GuestAddress(kMiB), 1).ok());
  uint16_t expected = 0;
  EXPECT_FALSE(memory.AtomicCompareExchange<uint16_t>(GuestAddress(kMiB + 2), expected, 1).ok());
  EXPECT_FALSE(memory.AtomicFetchOr<uint64_t>(GuestAddress(12), 1).ok());
}

TEST(GuestMemoryTest, AtomicOperations) {
  GuestMemory memory = TwoRegions();
  GuestAddress word(2 * kMiB + 8);
  ASSERT_TRUE(memory.AtomicStore<uint64_t>(word, 5).ok());
  EXPECT_EQ(*memory.AtomicLoad<uint64_t>(word), 5u);
  uint64_t expected = 4;
  EXPECT_FALSE(*memory.AtomicCompareExchange<uint64_t>(word, expected, 9));
  EXPECT_EQ(expected, 5u);
  EXPECT_TRUE(*memory.AtomicCompareExchange<uint64_t>(word, expected, 9));
  EXPECT_EQ(*memory.AtomicLoad<uint64_t>(word), 9u);
  EXPECT_EQ(*memory.AtomicFetchOr<uint64_t>(word, 0x10), 9u);
  EXPECT_EQ(*memory.AtomicFetchAnd<uint64_t>(word, ~uint64_t{1}), 0x19u);
  EXPECT_EQ(*memory.AtomicLoad<uint64_t>(word), 0x18u);
}

TEST(GuestMemoryTest, AtomicsUnderTwoThreads) {
  GuestMemory memory = TwoRegions();
  GuestAddress counter(0x1000);
  GuestAddress bitmap(0x2000);
  constexpr int kIterations = 100000;
  auto worker = [&](int thread_index) {
    for (int i = 0; i < kIterations; ++i) {
      // Increment by compare-exchange: lost updates would show in the final count.
      uint32_t current = *memory.AtomicLoad<uint32_t>(counter, std::memory_order_relaxed);
      while (!*memory.AtomicCompareExchange<uint32_t>(counter, current, current + 1)) {
      }
      // Each thread owns alternate bits of one word: a non-atomic read-modify-write would lose some.
      uint64_t bit = uint64_t{1} << (2 * (i % 32) + thread_index);
      (void)memory.AtomicFetchOr<uint64_t>(bitmap, bit);
      (void)memory.AtomicFetchAnd<uint64_t>(bitmap, ~bit);
      (void)memory.AtomicFetchOr<uint64_t>(bitmap, bit);
    }
  };
  std::thread first(worker, 0);
  std::thread second(worker, 1);
  first.join();
  second.join();
  EXPECT_EQ(*memory.AtomicLoad<uint32_t>(counter), 2u * kIterations);
  EXPECT_EQ(*memory.AtomicLoad<uint64_t>(bitmap), UINT64_MAX);
}

TEST(GuestMemoryTest, ReleaseStoreIsSeenWithAcquireLoad) {
  // A producer fills a payload then publishes an index, as a ring does; the consumer that sees the
  // index must see the payload.
  GuestMemory memory = TwoRegions();
  GuestAddress index(0x3000);
  GuestAddress payload(0x3008);
  constexpr uint32_t kMessages = 20000;
  std::thread producer([&] {
    for (uint32_t i = 1; i <= kMessages; ++i) {
      while (*memory.AtomicLoad<uint32_t>(index) != i - 1) {
      }
      ASSERT_TRUE(memory.WriteObject<uint64_t>(payload, uint64_t{i} * 3).ok());
      ASSERT_TRUE(memory.AtomicStore<uint32_t>(index, i | 0x80000000u).ok());
    }
  });
  for (uint32_t i = 1; i <= kMessages; ++i) {
    uint32_t seen;
    do {
      seen = *memory.AtomicLoad<uint32_t>(index);
    } while (seen != (i | 0x80000000u));
    ASSERT_EQ(*memory.ReadObject<uint64_t>(payload), uint64_t{i} * 3);
    ASSERT_TRUE(memory.AtomicStore<uint32_t>(index, i).ok());
  }
  producer.join();
}

}  // namespace
}  // namespace xenkvm::memory

namespace xenkvm::memory {
namespace {

TEST(GuestMemoryExtraPagesTest, PagesOutsideRamGetBackingAndLoseItAgain) {
  absl::StatusOr<GuestMemory> memory = GuestMemory::Create({{GuestAddress(0), 1 << 20}});
  ASSERT_TRUE(memory.ok());
  const GuestAddress page(0x20000000);
  EXPECT_FALSE(memory->IsValidRange(page, 8));
  absl::StatusOr<uint8_t*> host = memory->MapExtraPage(page);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_TRUE(memory->IsExtraPage(page));
  EXPECT_EQ(**host, 0);
  // Every accessor reaches it, within the page.
  ASSERT_TRUE(memory->WriteObject<uint64_t>(page.Unchecked(8), 0x1122334455667788).ok());
  EXPECT_EQ(*memory->ReadObject<uint64_t>(page.Unchecked(8)), 0x1122334455667788u);
  EXPECT_EQ(*memory->AtomicFetchOr<uint32_t>(page.Unchecked(16), 5u), 0u);
  EXPECT_EQ((*host)[16], 5);
  EXPECT_TRUE(memory->IsValidRange(page, kPageSize));
  EXPECT_FALSE(memory->IsValidRange(page.Unchecked(kPageSize - 4), 8)) << "crosses the extra page's end";
  EXPECT_FALSE(memory->IsValidRange(page.Unchecked(kPageSize), 1));
  // Mapping it again is the same page; RAM and unaligned pages are refused.
  EXPECT_EQ(*memory->MapExtraPage(page), *host);
  EXPECT_EQ(memory->MapExtraPage(GuestAddress(0x1000)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(memory->MapExtraPage(GuestAddress(0x20000010)).status().code(), absl::StatusCode::kInvalidArgument);
  // Unmapped: gone, and mapped again it starts zeroed.
  ASSERT_TRUE(memory->UnmapExtraPage(page).ok());
  EXPECT_FALSE(memory->IsValidRange(page, 8));
  EXPECT_FALSE(memory->ReadObject<uint64_t>(page.Unchecked(8)).ok());
  EXPECT_EQ(memory->UnmapExtraPage(page).code(), absl::StatusCode::kNotFound);
  absl::StatusOr<uint8_t*> again = memory->MapExtraPage(page);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*memory->ReadObject<uint64_t>(page.Unchecked(8)), 0u);
}

TEST(GuestMemoryExtraPagesTest, ThePoolIsBounded) {
  absl::StatusOr<GuestMemory> memory = GuestMemory::Create({{GuestAddress(0), 1 << 20}});
  ASSERT_TRUE(memory.ok());
  const uint64_t base = uint64_t{1} << 32;
  for (uint32_t i = 0; i < GuestMemory::kMaxExtraPages; ++i) {
    ASSERT_TRUE(memory->MapExtraPage(GuestAddress(base + i * kPageSize)).ok()) << i;
  }
  absl::StatusOr<uint8_t*> one_more = memory->MapExtraPage(GuestAddress(base + GuestMemory::kMaxExtraPages * kPageSize));
  EXPECT_EQ(one_more.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(memory->UnmapExtraPage(GuestAddress(base)).ok());
  EXPECT_TRUE(memory->MapExtraPage(GuestAddress(base + GuestMemory::kMaxExtraPages * kPageSize)).ok());
}

TEST(GuestMemoryHugePagesTest, AlignedRegionsGoOnHugePagesReservedAtCreation) {
  testing::ScopedHugePages pool(2);
  if (!pool.unavailable().empty()) GTEST_SKIP() << pool.unavailable();
  const int64_t before = AvailableHugePages();
  absl::StatusOr<GuestMemory> memory =
      GuestMemory::Create({{GuestAddress(0), 4 * kMiB}, {GuestAddress(0xfeff8000), 4 * kPageSize}}, RamPages::k2MiB);
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_TRUE(memory->regions()[0].huge_pages());
  EXPECT_FALSE(memory->regions()[1].huge_pages());  // 16 KiB: stays on small pages
  EXPECT_EQ(AvailableHugePages(), before - 2);  // reserved before any touch
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(3 * kMiB), 0x1122334455667788).ok());
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(3 * kMiB)), 0x1122334455667788u);
  ASSERT_TRUE(memory->WriteObject<uint32_t>(GuestAddress(0xfeff8000), 7).ok());
  EXPECT_EQ(*memory->ReadObject<uint32_t>(GuestAddress(0xfeff8000)), 7u);
}

TEST(GuestMemoryHugePagesTest, DiscardZeroesAndKeepsThePages) {
  testing::ScopedHugePages pool(2);
  if (!pool.unavailable().empty()) GTEST_SKIP() << pool.unavailable();
  absl::StatusOr<GuestMemory> memory = GuestMemory::Create({{GuestAddress(0), 4 * kMiB}}, RamPages::k2MiB);
  ASSERT_TRUE(memory.ok()) << memory.status();
  std::memset(*memory->HostAddress(GuestAddress(0), 4 * kMiB), 0xff, 4 * kMiB);
  auto allocated_bytes = [&] {  // the memfd's pages (this file's alone: other tests may use the pool)
    struct stat info {};
    EXPECT_EQ(fstat(memory->regions()[0].memfd(), &info), 0);
    return uint64_t(info.st_blocks) * 512;
  };
  EXPECT_EQ(allocated_bytes(), 4 * kMiB);
  ASSERT_TRUE(memory->Discard(GuestAddress(kPageSize), 2 * kPageSize).ok());
  ASSERT_TRUE(memory->Discard(GuestAddress(2 * kMiB), 2 * kMiB).ok());
  EXPECT_EQ(*memory->ReadObject<uint32_t>(GuestAddress(kPageSize - 4)), 0xffffffffu);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(kPageSize)), 0u);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(3 * kPageSize - 8)), 0u);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(GuestAddress(3 * kPageSize)), 0xffffffffu);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(3 * kMiB)), 0u);
  EXPECT_EQ(allocated_bytes(), 4 * kMiB);  // nothing went back to the pool
}

TEST(GuestMemoryHugePagesTest, TooFewInThePoolSaysHowToReserveThem) {
  // 64 GiB: more than this pool holds on any test machine, so refused at creation.
  absl::StatusOr<GuestMemory> memory = GuestMemory::Create({{GuestAddress(0), 64ull << 30}}, RamPages::k2MiB);
  ASSERT_FALSE(memory.ok());
  if (memory.status().code() == absl::StatusCode::kUnavailable ||
      Message(memory.status()).find("offers no 2 MiB huge pages") != std::string::npos) {
    GTEST_SKIP() << memory.status();
  }
  EXPECT_EQ(memory.status().code(), absl::StatusCode::kResourceExhausted) << memory.status();
  EXPECT_THAT(Message(memory.status()), HasSubstr("needs 32768 of them free"));
  EXPECT_THAT(Message(memory.status()), HasSubstr("/proc/sys/vm/nr_hugepages"));
}

}  // namespace
}  // namespace xenkvm::memory
