#include "components/block/io_engine.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "components/base/fd.h"
#include "components/block/io_transfer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::block {
namespace {

constexpr uint64_t kFileBytes = 1 << 20;

// Reaps into `done` until it holds `count` completions (gives up after ~10 s), without waiting on
// completion_fd().
void ReapUntil(IoEngine& engine, size_t count, std::vector<IoCompletion>& done) {
  for (int wait = 0; wait < 10000 && done.size() < count; ++wait) {
    if (engine.Reap(&done) == 0) usleep(1000);
  }
}

// Where the completion tagged `flush_tag` came among `done`; every completion should be a success.
size_t FlushPosition(const std::vector<IoCompletion>& done, uint64_t flush_tag) {
  size_t flush_at = 0;
  for (size_t i = 0; i < done.size(); ++i) {
    EXPECT_EQ(done[i].error, 0) << done[i].tag;
    if (done[i].tag == flush_tag) flush_at = i;
  }
  return flush_at;
}

class IoEngineTest : public ::testing::TestWithParam<EngineChoice> {
 protected:
  void SetUp() override {
    const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/image";
    fd_ = base::Fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd_.valid());
    ASSERT_EQ(ftruncate(fd_.get(), kFileBytes), 0);
    absl::StatusOr<std::unique_ptr<IoEngine>> engine = NewIoEngine(fd_.get(), 32, GetParam());
    if (!engine.ok() && GetParam() == EngineChoice::kUring) GTEST_SKIP() << "no io_uring here: " << engine.status();
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  // Waits (at most 10 s) for `count` completions, in the order they were reaped.
  std::vector<IoCompletion> Wait(size_t count) {
    std::vector<IoCompletion> done;
    WaitInto(count, done);
    return done;
  }
  // As a caller must: what Submit completed itself is only seen by HasCompletions.
  void WaitInto(size_t count, std::vector<IoCompletion>& done) {
    while (done.size() < count) {
      if (!engine_->HasCompletions()) {
        pollfd ready{engine_->completion_fd(), POLLIN, 0};
        if (poll(&ready, 1, 10000) <= 0) break;
        uint64_t signalled = 0;
        ASSERT_EQ(read(engine_->completion_fd(), &signalled, sizeof(signalled)), 8);
      }
      engine_->Reap(&done);
    }
  }

  IoRequest Transfer(IoOperation operation, uint64_t offset, std::vector<uint8_t>& buffer, uint64_t tag) {
    return IoRequest{operation, offset, 0, {iovec{buffer.data(), buffer.size()}}, tag};
  }

  base::Fd fd_;
  std::unique_ptr<IoEngine> engine_;
};

TEST_P(IoEngineTest, ManyWritesInFlightThenReadsIntoScatteredBuffersGiveTheDataBack) {
  std::vector<std::vector<uint8_t>> blocks;
  for (uint64_t i = 0; i < 32; ++i) blocks.emplace_back(4096, static_cast<uint8_t>(i + 1));
  for (uint64_t i = 0; i < 32; ++i) {
    ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kWrite, i * 8192, blocks[i], i)).ok());
  }
  EXPECT_EQ(engine_->in_flight(), 32u);
  ASSERT_TRUE(engine_->Submit().ok());
  std::vector<IoCompletion> written = Wait(32);
  ASSERT_EQ(written.size(), 32u);
  for (const IoCompletion& completion : written) EXPECT_EQ(completion.error, 0) << completion.tag;
  EXPECT_EQ(engine_->in_flight(), 0u);
  EXPECT_FALSE(engine_->HasCompletions());

  // Each block read back as three pieces of different sizes.
  std::vector<std::vector<uint8_t>> pieces(96);
  for (uint64_t i = 0; i < 32; ++i) {
    pieces[3 * i].assign(512, 0);
    pieces[3 * i + 1].assign(2560, 0);
    pieces[3 * i + 2].assign(1024, 0);
    IoRequest read{IoOperation::kRead, i * 8192, 0, {}, 100 + i};
    for (int k = 0; k < 3; ++k) read.buffers.push_back({pieces[3 * i + k].data(), pieces[3 * i + k].size()});
    ASSERT_TRUE(engine_->Enqueue(std::move(read)).ok());
  }
  ASSERT_TRUE(engine_->Submit().ok());
  std::vector<IoCompletion> read = Wait(32);
  ASSERT_EQ(read.size(), 32u);
  for (const IoCompletion& completion : read) EXPECT_EQ(completion.error, 0);
  for (uint64_t i = 0; i < 96; ++i) {
    EXPECT_THAT(pieces[i], ::testing::Each(static_cast<uint8_t>(i / 3 + 1))) << "piece " << i;
  }
}

TEST_P(IoEngineTest, RefusesMoreThanItsDepth) {
  std::vector<uint8_t> buffer(512);
  for (uint64_t i = 0; i < 32; ++i) ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kRead, 0, buffer, i)).ok());
  absl::Status refused = engine_->Enqueue(Transfer(IoOperation::kRead, 0, buffer, 99));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(engine_->Submit().ok());
  EXPECT_EQ(Wait(32).size(), 32u);
  EXPECT_TRUE(engine_->Enqueue(Transfer(IoOperation::kRead, 0, buffer, 100)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  EXPECT_EQ(Wait(1).size(), 1u);
}

TEST_P(IoEngineTest, FlushCompletesAfterEverythingBeforeItAndBeforeEverythingAfterIt) {
  std::vector<std::vector<uint8_t>> blocks(16, std::vector<uint8_t>(65536, 0x5a));
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kWrite, i << 16, blocks[i], i)).ok());
  ASSERT_TRUE(engine_->Enqueue(IoRequest{IoOperation::kFlush, 0, 0, {}, 1000}).ok());
  for (uint64_t i = 8; i < 16; ++i) ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kRead, (i - 8) << 16, blocks[i], i)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  std::vector<IoCompletion> done = Wait(17);
  ASSERT_EQ(done.size(), 17u);
  const size_t flush_at = FlushPosition(done, 1000);
  EXPECT_EQ(flush_at, 8u);
  for (size_t i = 0; i < flush_at; ++i) EXPECT_LT(done[i].tag, 8u);
}

TEST_P(IoEngineTest, DiscardMakesTheRangeReadAsZeros) {
  std::vector<uint8_t> data(16384, 0xee);
  ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kWrite, 0, data, 1)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  ASSERT_EQ(Wait(1).at(0).error, 0);
  ASSERT_TRUE(engine_->Enqueue(IoRequest{IoOperation::kDiscard, 4096, 8192, {}, 2}).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  ASSERT_EQ(Wait(1).at(0).error, 0);
  std::vector<uint8_t> back(16384, 0);
  ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kRead, 0, back, 3)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  ASSERT_EQ(Wait(1).at(0).error, 0);
  EXPECT_THAT(std::vector<uint8_t>(back.begin(), back.begin() + 4096), ::testing::Each(0xee));
  EXPECT_THAT(std::vector<uint8_t>(back.begin() + 4096, back.begin() + 12288), ::testing::Each(0));
  EXPECT_THAT(std::vector<uint8_t>(back.begin() + 12288, back.end()), ::testing::Each(0xee));
}

TEST_P(IoEngineTest, AReadPastTheEndOfTheFileIsAnError) {
  std::vector<uint8_t> buffer(8192);
  ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kRead, kFileBytes - 4096, buffer, 7)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  std::vector<IoCompletion> done = Wait(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].tag, 7u);
  EXPECT_EQ(done[0].error, EIO);
}

TEST_P(IoEngineTest, ABadFileIsReportedPerRequest) {
  base::Fd read_only(open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
  absl::StatusOr<std::unique_ptr<IoEngine>> engine = NewIoEngine(read_only.get(), 4, GetParam());
  ASSERT_TRUE(engine.ok());
  std::vector<uint8_t> buffer(512, 1);
  ASSERT_TRUE((*engine)->Enqueue(Transfer(IoOperation::kWrite, 0, buffer, 5)).ok());
  ASSERT_TRUE((*engine)->Submit().ok());
  engine_ = std::move(*engine);
  std::vector<IoCompletion> done = Wait(1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].error, EBADF);
}

TEST_P(IoEngineTest, WritesAfterAFlushWaitForIt) {
  std::vector<std::vector<uint8_t>> blocks(8, std::vector<uint8_t>(4096, 0x33));
  ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kWrite, 0, blocks[0], 0)).ok());
  ASSERT_TRUE(engine_->Enqueue(IoRequest{IoOperation::kFlush, 0, 0, {}, 1000}).ok());
  for (uint64_t i = 1; i < 8; ++i) ASSERT_TRUE(engine_->Enqueue(Transfer(IoOperation::kWrite, i << 12, blocks[i], i)).ok());
  ASSERT_TRUE(engine_->Submit().ok());
  std::vector<IoCompletion> done = Wait(9);
  ASSERT_EQ(done.size(), 9u);
  EXPECT_EQ(done[0].tag, 0u);
  EXPECT_EQ(done[1].tag, 1000u);
}

// io_uring hands ext4's page-cache writes to kernel workers one at a time; the engine does them
// inside Submit instead, and page-cache reads too, seen by HasCompletions (not signalled).
TEST(UringEngineTest, PageCacheWritesAndCachedReadsAreDoneBySubmit) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/inline";
  base::Fd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  absl::StatusOr<std::unique_ptr<IoEngine>> engine = NewUringEngine(fd.get(), 4);
  if (!engine.ok()) GTEST_SKIP() << "no io_uring here: " << engine.status();
  EXPECT_TRUE((*engine)->ReadsCachedDataInline());
  absl::StatusOr<std::unique_ptr<IoEngine>> pool = NewThreadPoolEngine(fd.get(), 4, 1);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_FALSE((*pool)->ReadsCachedDataInline());  // its workers do every transfer
  std::vector<uint8_t> data(8192, 0x77);
  std::vector<uint8_t> back(8192);
  for (auto [operation, buffer] : {std::pair{IoOperation::kWrite, &data}, {IoOperation::kRead, &back}}) {
    ASSERT_TRUE((*engine)->Enqueue(IoRequest{operation, 4096, 0, {iovec{buffer->data(), buffer->size()}}, 9}).ok());
    ASSERT_TRUE((*engine)->Submit().ok());
    EXPECT_TRUE((*engine)->HasCompletions());
    pollfd ready{(*engine)->completion_fd(), POLLIN, 0};
    EXPECT_EQ(poll(&ready, 1, 0), 0);
    std::vector<IoCompletion> done;
    ASSERT_EQ((*engine)->Reap(&done), 1u);
    EXPECT_EQ(done[0].tag, 9u);
    EXPECT_EQ(done[0].error, 0);
    EXPECT_EQ((*engine)->in_flight(), 0u);
  }
  EXPECT_EQ(back, data);
}

// A read the page cache holds only part of: the cached part inline, the rest by io_uring.
TEST(UringEngineTest, AReadPartlyInThePageCacheGivesAllOfIt) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/partly";
  base::Fd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  std::vector<uint8_t> data(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + i / 4096);
  ASSERT_EQ(pwrite(fd.get(), data.data(), data.size(), 0), 65536);
  ASSERT_EQ(fdatasync(fd.get()), 0);
  // Out of the page cache where the file system allows it (not tmpfs), then its first page back
  // without read-ahead.
  (void)posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  (void)posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);
  uint8_t first[4096];
  ASSERT_EQ(pread(fd.get(), first, sizeof(first), 0), 4096);
  absl::StatusOr<std::unique_ptr<IoEngine>> engine = NewUringEngine(fd.get(), 4);
  if (!engine.ok()) GTEST_SKIP() << "no io_uring here: " << engine.status();
  std::vector<uint8_t> pieces[2] = {std::vector<uint8_t>(6000), std::vector<uint8_t>(65536 - 6000)};
  IoRequest read{IoOperation::kRead, 0, 0, {}, 4};
  for (std::vector<uint8_t>& piece : pieces) read.buffers.push_back({piece.data(), piece.size()});
  ASSERT_TRUE((*engine)->Enqueue(std::move(read)).ok());
  ASSERT_TRUE((*engine)->Submit().ok());
  std::vector<IoCompletion> done;
  ReapUntil(**engine, 1, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].error, 0);
  pieces[0].insert(pieces[0].end(), pieces[1].begin(), pieces[1].end());
  EXPECT_EQ(pieces[0], data);
}

// O_DIRECT: each request starts as it is queued (no Submit needed for it to complete), and a
// flush still completes after the writes queued before it and before the reads queued after it.
TEST(UringEngineTest, DirectRequestsStartAsTheyAreQueuedAndAFlushStillOrdersThem) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/direct";
  base::Fd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600));
  if (!fd.valid() && errno == EINVAL) GTEST_SKIP() << "no O_DIRECT on the file system of " << path;
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(ftruncate(fd.get(), 1 << 20), 0);
  absl::StatusOr<std::unique_ptr<IoEngine>> engine = NewUringEngine(fd.get(), 32);
  if (!engine.ok()) GTEST_SKIP() << "no io_uring here: " << engine.status();
  EXPECT_FALSE((*engine)->ReadsCachedDataInline());  // no page cache
  constexpr size_t kBlock = 4096;
  void* memory = nullptr;
  ASSERT_EQ(posix_memalign(&memory, kBlock, 16 * kBlock), 0);
  std::unique_ptr<uint8_t, decltype(&std::free)> buffers(static_cast<uint8_t*>(memory), &std::free);
  for (size_t i = 0; i < 8; ++i) std::memset(buffers.get() + i * kBlock, static_cast<int>(i + 1), kBlock);
  std::memset(buffers.get() + 8 * kBlock, 0, 8 * kBlock);
  auto transfer = [&](IoOperation operation, size_t block, uint64_t tag) {
    return IoRequest{operation, (block % 8) * kBlock, 0, {iovec{buffers.get() + block * kBlock, kBlock}}, tag};
  };
  for (size_t i = 0; i < 8; ++i) ASSERT_TRUE((*engine)->Enqueue(transfer(IoOperation::kWrite, i, i)).ok());
  // Started without Submit: their completions come.
  std::vector<IoCompletion> done;
  ReapUntil(**engine, 8, done);
  ASSERT_EQ(done.size(), 8u);
  for (size_t i = 0; i < 8; ++i) ASSERT_TRUE((*engine)->Enqueue(transfer(IoOperation::kWrite, i, 10 + i)).ok());
  ASSERT_TRUE((*engine)->Enqueue(IoRequest{IoOperation::kFlush, 0, 0, {}, 1000}).ok());
  for (size_t i = 8; i < 16; ++i) ASSERT_TRUE((*engine)->Enqueue(transfer(IoOperation::kRead, i, 100 + i)).ok());
  ASSERT_TRUE((*engine)->Submit().ok());
  done.clear();
  ReapUntil(**engine, 17, done);
  ASSERT_EQ(done.size(), 17u);
  const size_t flush_at = FlushPosition(done, 1000);
  EXPECT_EQ(flush_at, 8u);
  for (size_t i = 0; i < flush_at; ++i) EXPECT_LT(done[i].tag, 100u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(buffers.get()[(8 + i) * kBlock], i + 1) << "block " << i;
    EXPECT_EQ(buffers.get()[(8 + i) * kBlock + kBlock - 1], i + 1) << "block " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, IoEngineTest, ::testing::Values(EngineChoice::kUring, EngineChoice::kThreads),
                         [](const ::testing::TestParamInfo<EngineChoice>& info) {
                           return info.param == EngineChoice::kUring ? std::string("Uring") : std::string("Threads");
                         });

TEST(IoTransferTest, AdvanceTrimsThePieceInProgressAndMovesTheOffset) {
  char a[100], b[200], c[300];
  IoTransfer transfer{IoRequest{IoOperation::kRead, 1000, 0, {{a, 100}, {b, 200}, {c, 300}}, 0}, 0};
  EXPECT_TRUE(transfer.Advance(150));
  EXPECT_EQ(transfer.request.offset, 1150u);
  EXPECT_EQ(transfer.vector_count(), 2);
  EXPECT_EQ(transfer.vectors()[0].iov_base, b + 50);
  EXPECT_EQ(transfer.vectors()[0].iov_len, 150u);
  EXPECT_TRUE(transfer.Advance(150));
  EXPECT_EQ(transfer.vector_count(), 1);
  EXPECT_EQ(transfer.vectors()[0].iov_base, c);
  EXPECT_FALSE(transfer.Advance(300));
  EXPECT_EQ(transfer.vector_count(), 0);
}

}  // namespace
}  // namespace xenkvm::block
