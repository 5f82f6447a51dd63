#include "components/block/image.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <vector>

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

TEST(ImageTest, ReadsWritesFlushesAndDiscards) {
  auto image = Image::Open(MakeImage("rw.img", 64 * kSectorSize), false);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ((*image)->sectors(), 64u);
  EXPECT_TRUE((*image)->supports_discard());
  std::vector<uint8_t> sector(kSectorSize);
  ASSERT_TRUE((*image)->Read(5 * kSectorSize, sector).ok());
  EXPECT_EQ(sector[0], 5);
  std::fill(sector.begin(), sector.end(), 0xab);
  ASSERT_TRUE((*image)->Write(7 * kSectorSize, sector).ok());
  ASSERT_TRUE((*image)->Flush().ok());
  std::vector<uint8_t> back(kSectorSize);
  ASSERT_TRUE((*image)->Read(7 * kSectorSize, back).ok());
  EXPECT_EQ(back, sector);
  ASSERT_TRUE((*image)->Discard(4 * 4096, 4096).ok());  // whole file-system blocks: zeros after
  ASSERT_TRUE((*image)->Read(4 * 4096, back).ok());
  EXPECT_EQ(back, std::vector<uint8_t>(kSectorSize, 0));
  EXPECT_THAT((*image)->Read(64 * kSectorSize, back).ToString(), HasSubstr("past the end"));
}

TEST(ImageTest, ReadOnlyImagesRefuseWrites) {
  auto image = Image::Open(MakeImage("ro.img", 8 * kSectorSize), true);
  ASSERT_TRUE(image.ok());
  std::vector<uint8_t> sector(kSectorSize);
  EXPECT_EQ((*image)->Write(0, sector).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE((*image)->supports_discard());
}

TEST(ImageTest, OpeningSaysWhatIsWrong) {
  auto missing = Image::Open("/no/such/disk.img", false);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/no/such/disk.img"));
  EXPECT_EQ(Image::Open(std::getenv("TEST_TMPDIR"), true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Image::Open(MakeImage("tiny.img", 100), true).status().message(), HasSubstr("smaller than one"));
}

}  // namespace
}  // namespace xenkvm::block
