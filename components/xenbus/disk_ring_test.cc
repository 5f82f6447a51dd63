#include "components/xenbus/disk_ring.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/frontends/blkfront.h"

namespace xenkvm::xenbus {
namespace {

using blkif::kOpDiscard;
using blkif::kOpFlush;
using blkif::kOpIndirect;
using blkif::kOpRead;
using blkif::kOpWrite;
using blkif::kStatusError;
using blkif::kStatusNotSupported;
using blkif::kStatusOkay;
using testing::Blkfront;

constexpr uint64_t kTableGfn = 0x10;
constexpr uint64_t kRingGfn = 0x20;
constexpr uint64_t kDataGfn = 0x30;  // 0x30..0x4f: data pages
constexpr uint64_t kSectors = 2048;  // a 1 MiB image

class DiskRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 1 << 20}})).value());
    grants_ = std::make_unique<xen::GrantTable>(*memory_, 4);
    ASSERT_EQ(grants_->MapFrame(0, kTableGfn), 0);
    // Sector n holds the byte n % 251 throughout.
    path_ = std::string(std::getenv("TEST_TMPDIR")) + "/disk.img";
    std::vector<char> data(kSectors * 512);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i / 512) % 251);
    std::ofstream(path_, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  void Start(bool read_only = false, DiskRing::Options options = {}) {
    image_ = std::move(block::Image::Open(path_, read_only)).value();
    front_ = std::make_unique<Blkfront>(*memory_, kTableGfn, kRingGfn);
    options.ring_grefs = front_->ring_grefs();
    auto ring = DiskRing::Start(*grants_, *image_, options, [this] {
      ++notifications_;
      if (on_notify_) on_notify_();
    });
    ASSERT_TRUE(ring.ok()) << ring.status();
    ring_ = std::move(*ring);
  }
  // Puts requests, publishes, kicks, and takes as many responses, by id (requests in flight
  // together are answered as they finish).
  std::vector<Blkfront::Response> Submit(const std::vector<std::vector<uint8_t>>& requests) {
    for (const auto& request : requests) front_->Put(request);
    front_->Publish();
    ring_->Kick();
    std::vector<Blkfront::Response> responses = front_->Take(requests.size());
    std::sort(responses.begin(), responses.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
    return responses;
  }
  uint8_t PageByte(uint64_t gfn, uint32_t offset) {
    return *memory_->ReadObject<uint8_t>(memory::GuestAddress((gfn << 12) + offset));
  }
  void TearDown() override { ring_.reset(); }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<xen::GrantTable> grants_;
  std::string path_;
  std::unique_ptr<block::Image> image_;
  std::unique_ptr<Blkfront> front_;
  std::unique_ptr<DiskRing> ring_;
  std::atomic<int> notifications_{0};
  std::function<void()> on_notify_;  // on the ring's thread, at each notification
  // What on_notify_ saw (LargeTransfersAreAnsweredOneByOne): a member, so a test that returns
  // early still stops the ring (TearDown) before this goes.
  std::vector<uint32_t> published_;
};

TEST_F(DiskRingTest, ReadsAndWritesThroughGrantedPages) {
  Start();
  const uint32_t page0 = front_->Grant(kDataGfn, false);
  const uint32_t page1 = front_->Grant(kDataGfn + 1, false);
  // 8 sectors from 100 into page 0, then sectors 2..4 of page 1 from 300.
  auto responses = Submit({front_->ReadWrite(kOpRead, 1, 100, {{page0, 0, 7}}),
                           front_->ReadWrite(kOpRead, 2, 300, {{page1, 2, 4}})});
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].id, 1u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  EXPECT_EQ(responses[1].operation, kOpRead);
  EXPECT_EQ(PageByte(kDataGfn, 0), 100);
  EXPECT_EQ(PageByte(kDataGfn, 7 * 512 + 511), 107);
  EXPECT_EQ(PageByte(kDataGfn + 1, 2 * 512), 300 % 251);
  EXPECT_EQ(PageByte(kDataGfn + 1, 4 * 512 + 10), 302 % 251);
  EXPECT_GT(notifications_.load(), 0);

  // Write page 1's sector 2 to disk sector 5, read it back into page 2.
  const uint32_t page2 = front_->Grant(kDataGfn + 2, false);
  responses = Submit({front_->ReadWrite(kOpWrite, 3, 5, {{page1, 2, 2}}), front_->ReadWrite(kOpFlush, 4, 0, {}),
                      front_->ReadWrite(kOpRead, 5, 5, {{page2, 0, 0}})});
  ASSERT_EQ(responses.size(), 3u);
  for (const auto& response : responses) EXPECT_EQ(response.status, kStatusOkay) << response.id;
  EXPECT_EQ(PageByte(kDataGfn + 2, 0), 300 % 251);
  EXPECT_EQ(front_->EntryFlags(page2), 1);  // nothing stays pinned
  DiskRingStatistics statistics = ring_->Statistics();
  EXPECT_EQ(statistics.requests, 5u);
  EXPECT_EQ(statistics.bytes_written, 512u);
  EXPECT_EQ(statistics.flushes, 1u);
  uint64_t timed = 0;
  for (uint64_t count : statistics.latency_counts) timed += count;
  EXPECT_EQ(timed, 5u);  // every request lands in one latency bucket
  EXPECT_GT(statistics.latency_seconds_sum, 0);
}

// A full ring of writes in flight at once, a flush behind them, then a full ring of reads: on
// io_uring and on the thread pool that replaces it where io_uring is missing.
TEST_F(DiskRingTest, AFullRingInFlightOnEitherEngine) {
  for (block::EngineChoice engine : {block::EngineChoice::kUring, block::EngineChoice::kThreads}) {
    DiskRing::Options options;
    options.engine = engine;
    Start(false, options);
    std::vector<uint32_t> pages;
    for (uint32_t i = 0; i < 32; ++i) {
      pages.push_back(front_->Grant(kDataGfn + i, false));
      ASSERT_TRUE(memory_->Write(memory::GuestAddress((kDataGfn + i) << 12), std::vector<uint8_t>(4096, 0xc0 + i)).ok());
    }
    std::vector<std::vector<uint8_t>> writes;
    for (uint32_t i = 0; i < 32; ++i) writes.push_back(front_->ReadWrite(kOpWrite, i, 8 * i, {{pages[i], 0, 7}}));
    auto responses = Submit(writes);
    ASSERT_EQ(responses.size(), 32u);
    for (const auto& response : responses) EXPECT_EQ(response.status, kStatusOkay);
    ASSERT_EQ(Submit({front_->ReadWrite(kOpFlush, 99, 0, {})}).at(0).status, kStatusOkay);
    // Read back crosswise: page i gets what page 31 - i wrote.
    std::vector<std::vector<uint8_t>> reads;
    for (uint32_t i = 0; i < 32; ++i) reads.push_back(front_->ReadWrite(kOpRead, 100 + i, 8 * (31 - i), {{pages[i], 0, 7}}));
    responses = Submit(reads);
    ASSERT_EQ(responses.size(), 32u);
    for (const auto& response : responses) EXPECT_EQ(response.status, kStatusOkay);
    for (uint32_t i = 0; i < 32; ++i) {
      EXPECT_EQ(PageByte(kDataGfn + i, 0), 0xc0 + 31 - i);
      EXPECT_EQ(PageByte(kDataGfn + i, 4095), 0xc0 + 31 - i);
    }
    EXPECT_EQ(ring_->Statistics().requests, 65u);
    EXPECT_EQ(ring_->engine_name(), engine == block::EngineChoice::kUring ? "io_uring" : "threads");
    ring_.reset();
    image_.reset();  // the next round opens it again
    EXPECT_EQ(grants_->Statistics().active, 0u);  // nothing stays mapped
  }
}

TEST_F(DiskRingTest, OneBadGrantFailsTheRequestAndReleasesTheRest) {  // XSA-361/362/365
  Start();
  std::vector<Blkfront::Segment> segments;
  for (int i = 0; i < 10; ++i) segments.push_back({front_->Grant(kDataGfn + i, false), 0, 7});
  segments.push_back({4 * 512, 0, 7});  // beyond the mapped table frame
  auto responses = Submit({front_->ReadWrite(kOpRead, 7, 0, segments)});
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, kStatusError);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(front_->EntryFlags(segments[i].gref), 1) << i;  // released
  EXPECT_EQ(PageByte(kDataGfn, 0), 0);  // nothing was read into them
  EXPECT_EQ(grants_->Statistics().active, 1u);  // only the ring
}

TEST_F(DiskRingTest, RefusesWhatTheGrantOrTheDiskDoesNotAllow) {
  Start(/*read_only=*/true);
  const uint32_t readonly_grant = front_->Grant(kDataGfn, /*readonly=*/true);
  const uint32_t other_domain = front_->Grant(kDataGfn + 1, false, /*domid=*/3);
  const uint32_t fine = front_->Grant(kDataGfn + 2, false);
  auto responses = Submit({
      front_->ReadWrite(kOpRead, 1, 0, {{readonly_grant, 0, 7}}),   // the device would write into it
      front_->ReadWrite(kOpRead, 2, 0, {{other_domain, 0, 7}}),
      front_->ReadWrite(kOpWrite, 3, 0, {{fine, 0, 7}}),            // a read-only disk
      front_->ReadWrite(kOpRead, 4, kSectors - 4, {{fine, 0, 7}}),  // past the end
      front_->ReadWrite(kOpRead, 5, 0, {{fine, 6, 2}}),             // first > last
      front_->ReadWrite(42, 6, 0, {}),                              // no such operation
      front_->ReadWrite(kOpDiscard, 7, 0, {}),                      // not offered here
      front_->ReadWrite(kOpIndirect, 8, 0, {}),                     // not offered here
      front_->ReadWrite(kOpRead, 9, 0, {{fine, 0, 0}}),             // reading a read-only disk is fine
      front_->ReadWrite(kOpWrite, 10, 0, {{readonly_grant, 0, 0}}), // writing it is not, whatever the grant
  });
  ASSERT_EQ(responses.size(), 10u);
  const int16_t expected[] = {kStatusError, kStatusError, kStatusError,        kStatusError,        kStatusError,
                              kStatusNotSupported, kStatusNotSupported, kStatusNotSupported, kStatusOkay, kStatusError};
  for (size_t i = 0; i < responses.size(); ++i) {
    EXPECT_EQ(responses[i].id, i + 1);
    EXPECT_EQ(responses[i].status, expected[i]) << "request " << i + 1;
  }
}

TEST_F(DiskRingTest, AProducerTooFarAheadBreaksTheRingHarmlessly) {
  Start();
  front_->SetRequestProducer(0x80000000u);
  ring_->Kick();
  for (int i = 0; i < 1000 && !ring_->Statistics().broken; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(ring_->Statistics().broken);
  EXPECT_EQ(ring_->Statistics().requests, 0u);
  EXPECT_EQ(front_->ResponseProducer(), 0u);
}

TEST_F(DiskRingTest, DiscardIndirectAndPersistentGrants) {
  DiskRing::Options options;
  options.persistent_grants = true;
  options.max_indirect_segments = 256;
  Start(false, options);
  // Indirect: 40 one-page segments (more than 11) from sector 16, described in one granted page.
  const uint64_t kIndirectGfn = 0x60;
  std::vector<uint32_t> grefs;
  for (int i = 0; i < 40; ++i) grefs.push_back(front_->Grant(0x70 + i % 16, false));
  for (int i = 0; i < 40; ++i) {
    uint8_t segment[8] = {};
    std::memcpy(segment, &grefs[i], 4);
    segment[4] = 0;
    segment[5] = 0;  // one sector each
    ASSERT_TRUE(memory_->Write(memory::GuestAddress((kIndirectGfn << 12) + 8 * i), segment).ok());
  }
  const uint32_t indirect_page = front_->Grant(kIndirectGfn, true);
  std::vector<uint8_t> indirect(blkif::RequestSize(blkif::Abi::k64), 0);
  indirect[0] = kOpIndirect;
  indirect[1] = kOpRead;
  uint16_t count = 40;
  uint64_t id = 77, sector = 16;
  std::memcpy(indirect.data() + 2, &count, 2);
  std::memcpy(indirect.data() + 8, &id, 8);
  std::memcpy(indirect.data() + 16, &sector, 8);
  std::memcpy(indirect.data() + 28, &indirect_page, 4);
  auto responses = Submit({indirect});
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  EXPECT_EQ(responses[0].operation, kOpRead);  // the indirect operation, as blkfront checks
  EXPECT_EQ(PageByte(0x70 + 39 % 16, 0), (16 + 39) % 251);  // the last segment's sector
  // Every segment's grant stays mapped for the frontend's next requests.
  EXPECT_EQ(ring_->Statistics().persistent_grants, 40u);
  EXPECT_EQ(front_->EntryFlags(grefs[0]) & 0x18, 0x18);  // GTF_reading | GTF_writing held
  EXPECT_EQ(front_->EntryFlags(indirect_page), 5);        // granted read-only: released
  // Linux's blkfront grants its indirect pages writable with persistent grants, and reuses them:
  // kept mapped as the data pages are. (The same 40 segments, in the next page.)
  std::vector<uint8_t> copied(40 * 8);
  ASSERT_TRUE(memory_->Read(memory::GuestAddress(kIndirectGfn << 12), copied).ok());
  ASSERT_TRUE(memory_->Write(memory::GuestAddress((kIndirectGfn + 1) << 12), copied).ok());
  const uint32_t writable_indirect_page = front_->Grant(kIndirectGfn + 1, false);
  std::memcpy(indirect.data() + 28, &writable_indirect_page, 4);
  responses = Submit({indirect});
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  EXPECT_EQ(ring_->Statistics().persistent_grants, 41u);
  EXPECT_EQ(front_->EntryFlags(writable_indirect_page) & 0x18, 0x18);

  // Discard: zeros afterwards.
  std::vector<uint8_t> discard(blkif::RequestSize(blkif::Abi::k64), 0);
  discard[0] = kOpDiscard;
  uint64_t discard_id = 78, discard_sector = 1024, discard_count = 16;
  std::memcpy(discard.data() + 8, &discard_id, 8);
  std::memcpy(discard.data() + 16, &discard_sector, 8);
  std::memcpy(discard.data() + 24, &discard_count, 8);
  const uint32_t page = front_->Grant(kDataGfn, false);
  // One after the other: requests in flight together complete in any order, as on a real disk.
  responses = Submit({discard});
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  responses = Submit({front_->ReadWrite(kOpRead, 79, 1024, {{page, 0, 7}})});
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  EXPECT_EQ(PageByte(kDataGfn, 0), 0);
  EXPECT_EQ(ring_->Statistics().discards, 1u);

  // Tearing the ring down releases every persistent grant.
  ring_.reset();
  EXPECT_EQ(front_->EntryFlags(grefs[0]), 1);
  EXPECT_EQ(grants_->Statistics().active, 0u);
}

// A page-cache transfer is done within its submission (io_uring, on the ring's thread): large
// ones are submitted, and answered, one by one (DiskRing::kEarlySubmitBytes), so the frontend sees
// the first responses while later requests are still copied. Submitted as one batch, the
// response index would jump from none to all. The frontend asks for an event at every next
// response, and the notification, on the ring's thread, records the index each publication
// left: what was published when, whatever the scheduling of the test's own thread.
TEST_F(DiskRingTest, LargeTransfersAreAnsweredOneByOne) {
  memory_ = std::make_unique<memory::GuestMemory>(
      std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 2 << 20}})).value());
  grants_ = std::make_unique<xen::GrantTable>(*memory_, 4);
  ASSERT_EQ(grants_->MapFrame(0, kTableGfn), 0);
  DiskRing::Options options;
  options.persistent_grants = true;
  options.max_indirect_segments = 256;
  Start(false, options);
  const memory::GuestAddress response_event((kRingGfn << 12) + 12);
  on_notify_ = [this, response_event] {
    published_.push_back(front_->ResponseProducer());
    ASSERT_TRUE(memory_->AtomicStore<uint32_t>(response_event, published_.back() + 1).ok());
  };
  constexpr uint64_t kIndirectGfn = 0x40, kFirstDataGfn = 0x100;  // 256 data pages: 1 MiB, the whole image
  std::vector<Blkfront::Segment> segments;
  for (uint64_t page = 0; page < 256; ++page) segments.push_back({front_->Grant(kFirstDataGfn + page, false), 0, 7});
  const std::vector<uint8_t> request =
      front_->Indirect(kOpRead, 0, 0, segments, kIndirectGfn, front_->Grant(kIndirectGfn, true));
  const uint32_t batch = front_->slots();
  for (uint32_t i = 0; i < batch; ++i) front_->Put(request);
  front_->Publish();
  ring_->Kick();
  std::vector<Blkfront::Response> responses = front_->Take(batch);
  ASSERT_EQ(responses.size(), batch);
  for (const Blkfront::Response& response : responses) ASSERT_EQ(response.status, kStatusOkay);
  ring_.reset();  // its thread joined: published_ is complete
  ASSERT_FALSE(published_.empty());
  EXPECT_GT(published_.size(), 1u) << "the responses were published at once: " << published_.front();
  EXPECT_TRUE(std::is_sorted(published_.begin(), published_.end()));
  EXPECT_EQ(published_.back(), batch);
  EXPECT_EQ(PageByte(kFirstDataGfn + 255, 4095), 2047 % 251);  // the image's last byte
}

// While the ring's thread sleeps, a kick with a few small reads is served on the kicking thread
// (a guest's vCPU): answered, and the frontend notified from there, before Kick returns. Other
// requests, and more reads at once than a kick serves, wake the ring's thread.
TEST_F(DiskRingTest, SmallReadsAreServedOnTheKickersThreadWhileTheRingSleeps) {
  absl::Mutex mutex;
  std::optional<std::thread::id> notified_on;
  on_notify_ = [&] {
    absl::MutexLock lock(&mutex);
    notified_on = std::this_thread::get_id();
  };
  Start();
  const uint32_t page = front_->Grant(kDataGfn, false);
  // Only once the thread has seen the frontend wait for each response (two of its windows).
  auto wait_for_each = [&] {
    for (uint32_t i = 0; i < 2 * DiskRing::kWaitsWindow; ++i) {
      ASSERT_EQ(Submit({front_->ReadWrite(kOpRead, 1, i, {{page, 0, 0}})}).at(0).status, kStatusOkay);
    }
  };
  wait_for_each();
  // Whether `requests`, kicked once the thread sleeps, were all answered here by Kick.
  auto served_by_kick = [&](const std::vector<std::vector<uint8_t>>& requests) {
    for (const auto& request : requests) front_->Put(request);
    absl::SleepFor(absl::Milliseconds(20));  // beyond the thread's polling (200 us at most)
    EXPECT_TRUE(front_->PublishAndCheckNotify());  // the sleeping thread asked for a kick
    {
      absl::MutexLock lock(&mutex);
      notified_on.reset();
    }
    const uint32_t before = front_->ResponseProducer();
    ring_->Kick();
    const bool answered = front_->ResponseProducer() - before == requests.size();
    std::vector<Blkfront::Response> responses = front_->Take(requests.size());
    EXPECT_EQ(responses.size(), requests.size());
    for (const auto& response : responses) EXPECT_EQ(response.status, kStatusOkay) << response.id;
    absl::MutexLock lock(&mutex);
    return answered && notified_on == std::this_thread::get_id();
  };
  // A loaded machine may leave the thread awake past the pause: tried a few times.
  bool served = false;
  int attempt = 0;
  for (; attempt < 10 && !served; ++attempt) {
    served = served_by_kick({front_->ReadWrite(kOpRead, 2, 100 + attempt, {{page, 0, 7}})});
  }
  EXPECT_TRUE(served);
  EXPECT_EQ(PageByte(kDataGfn, 0), 100 + attempt - 1);  // the last read's sector
  EXPECT_EQ(PageByte(kDataGfn, 7 * 512), 100 + attempt - 1 + 7);
  EXPECT_FALSE(served_by_kick({front_->ReadWrite(kOpWrite, 3, 500, {{page, 0, 0}})}));
  wait_for_each();
  std::vector<std::vector<uint8_t>> reads;
  for (uint32_t i = 0; i <= DiskRing::kInlineRequests; ++i) {
    reads.push_back(front_->ReadWrite(kOpRead, 10 + i, 8 * i, {{front_->Grant(kDataGfn + 1 + i, false), 0, 7}}));
  }
  EXPECT_FALSE(served_by_kick(reads));
  EXPECT_EQ(PageByte(kDataGfn + 1 + DiskRing::kInlineRequests, 0), 8 * DiskRing::kInlineRequests % 251);
}

TEST_F(DiskRingTest, ThirtyTwoBitFrontends) {
  image_ = std::move(block::Image::Open(path_, false)).value();
  Blkfront front(*memory_, kTableGfn, kRingGfn, blkif::Abi::k32);
  DiskRing::Options options;
  options.abi = blkif::Abi::k32;
  options.ring_grefs = front.ring_grefs();
  ring_ = std::move(DiskRing::Start(*grants_, *image_, options, [] {})).value();
  const uint32_t page = front.Grant(kDataGfn, false);
  front.Put(front.ReadWrite(kOpRead, 0x1234, 250, {{page, 0, 0}}));
  front.Publish();
  ring_->Kick();
  auto responses = front.Take(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(responses[0].id, 0x1234u);
  EXPECT_EQ(responses[0].status, kStatusOkay);
  EXPECT_EQ(PageByte(kDataGfn, 0), 250);
}

TEST_F(DiskRingTest, AnUngrantedRingIsRefused) {
  image_ = std::move(block::Image::Open(path_, false)).value();
  DiskRing::Options options;
  options.ring_grefs = {100};  // empty entry
  auto ring = DiskRing::Start(*grants_, *image_, options, [] {});
  EXPECT_EQ(ring.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ring.status().message(), ::testing::HasSubstr("ring-ref 100"));
}

}  // namespace
}  // namespace xenkvm::xenbus
