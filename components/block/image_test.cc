#include "components/block/image.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::block {
namespace {

using ::testing::HasSubstr;

std::string MakeImage(const std::string& name, size_t bytes) {
  std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
  std::vector<char> data(bytes);
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<char>(i / kSectorSize);
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  return path;
}

TEST(ImageTest, OpensForReadingAndWritingWithItsSizeAndDiscard) {
  auto image = Image::Open(MakeImage("rw.img", 64 * kSectorSize), false);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ((*image)->sectors(), 64u);
  EXPECT_TRUE((*image)->supports_discard());
  EXPECT_EQ((*image)->cache(), CacheMode::kWriteback);
  EXPECT_EQ((*image)->logical_block_size(), kSectorSize);
  EXPECT_EQ(fcntl((*image)->fd(), F_GETFL) & (O_ACCMODE | O_DIRECT), O_RDWR);
  uint8_t byte = 0;
  ASSERT_EQ(pread((*image)->fd(), &byte, 1, 5 * kSectorSize), 1);
  EXPECT_EQ(byte, 5);
}

TEST(ImageTest, ReadOnlyImagesAreOpenedReadOnly) {
  auto image = Image::Open(MakeImage("ro.img", 8 * kSectorSize), true);
  ASSERT_TRUE(image.ok());
  EXPECT_EQ(fcntl((*image)->fd(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_FALSE((*image)->supports_discard());
}

// cache=none: the file is opened O_DIRECT and its alignment found; where the file system has no
// O_DIRECT (tmpfs before Linux 6.6), the refusal says what to use instead.
TEST(ImageTest, CacheNoneOpensTheFileForDirectIo) {
  const std::string path = MakeImage("direct.img", 64 * kSectorSize);
  auto image = Image::Open(path, false, CacheMode::kNone);
  if (!image.ok()) {
    EXPECT_THAT(image.status().message(), HasSubstr("use cache=writeback"));
    GTEST_SKIP() << "the test's file system has no O_DIRECT: " << image.status();
  }
  EXPECT_EQ((*image)->cache(), CacheMode::kNone);
  EXPECT_NE(fcntl((*image)->fd(), F_GETFL) & O_DIRECT, 0);
  EXPECT_GE((*image)->logical_block_size(), kSectorSize);
  EXPECT_LE((*image)->logical_block_size(), 4096u);
}

TEST(ImageTest, CacheModesParseByQemuNames) {
  EXPECT_EQ(*ParseCacheMode("none"), CacheMode::kNone);
  EXPECT_EQ(*ParseCacheMode("writeback"), CacheMode::kWriteback);
  EXPECT_THAT(ParseCacheMode("unsafe").status().message(), HasSubstr("writeback"));
}

TEST(ImageTest, OpeningSaysWhatIsWrong) {
  auto missing = Image::Open("/no/such/disk.img", false);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/no/such/disk.img"));
  EXPECT_EQ(Image::Open(std::getenv("TEST_TMPDIR"), true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Image::Open(MakeImage("tiny.img", 100), true).status().message(), HasSubstr("smaller than one"));
}

// QEMU's rule: many readers, or one writer. Within one process (two disks of one VM) too.
TEST(ImageTest, LocksAllowManyReadersOrOneWriter) {
  const std::string path = MakeImage("locked.img", 8 * kSectorSize);
  {
    auto writer = Image::Open(path, false);
    ASSERT_TRUE(writer.ok()) << writer.status();
    auto second_writer = Image::Open(path, false);
    EXPECT_EQ(second_writer.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(second_writer.status().message(), HasSubstr("is in use"));
    EXPECT_THAT(second_writer.status().message(), HasSubstr("itself"));  // the holder, named
    auto reader = Image::Open(path, true);
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(reader.status().message(), HasSubstr("in use read-write"));
  }
  auto first_reader = Image::Open(path, true);
  auto second_reader = Image::Open(path, true);
  ASSERT_TRUE(first_reader.ok()) << first_reader.status();
  EXPECT_TRUE(second_reader.ok()) << second_reader.status();
  EXPECT_EQ(Image::Open(path, false).status().code(), absl::StatusCode::kFailedPrecondition);
  first_reader->reset();
  second_reader->reset();
  EXPECT_TRUE(Image::Open(path, false).ok());  // every lock went with its file
}

// Another process (another VMM) holding the image read-write is named in the refusal.
// OpenFile in one place, Adopt in another (xenkvmd and a confined VMM): the lock taken by the
// opener is the adopter's, and the access mode must match.
TEST(ImageTest, AnOpenedFileIsAdoptedWithItsLock) {
  const std::string path = MakeImage("handed.img", 8 * kSectorSize);
  absl::StatusOr<base::Fd> opened = Image::OpenFile(path, /*read_only=*/false);
  ASSERT_TRUE(opened.ok()) << opened.status();
  absl::StatusOr<base::Fd> copy = opened->Duplicate();
  ASSERT_TRUE(copy.ok());
  absl::StatusOr<std::unique_ptr<Image>> adopted = Image::Adopt(path, std::move(*copy), false);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  opened->Reset();  // the opener lets go; the adopter's copy keeps the file and its lock
  EXPECT_EQ((*adopted)->sectors(), 8u);
  EXPECT_EQ(pwrite((*adopted)->fd(), "x", 1, 0), 1);
  EXPECT_EQ(Image::Open(path, true).status().code(), absl::StatusCode::kFailedPrecondition);
  adopted->reset();
  EXPECT_TRUE(Image::Open(path, true).ok());

  absl::StatusOr<base::Fd> read_only = Image::OpenFile(path, /*read_only=*/true);
  ASSERT_TRUE(read_only.ok());
  EXPECT_EQ(Image::Adopt(path, std::move(*read_only), false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Image::OpenFile("/tmp", true).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ImageTest, LockHeldByAnotherProcessNamesIt) {
  const std::string path = MakeImage("shared.img", 8 * kSectorSize);
  int ready[2], release[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(release), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto image = Image::Open(path, false);
    char byte = image.ok() ? 'y' : 'n';
    (void)!write(ready[1], &byte, 1);
    (void)!read(release[0], &byte, 1);
    _exit(0);
  }
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  ASSERT_EQ(byte, 'y');
  auto refused = Image::Open(path, true);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr(absl::StrCat("pid ", child)));
  (void)!write(release[1], "x", 1);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(Image::Open(path, true).ok());
  for (int fd : {ready[0], ready[1], release[0], release[1]}) close(fd);
}

}  // namespace
}  // namespace xenkvm::block
