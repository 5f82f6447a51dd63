#include "components/loader/kernel_image.h"

#include <bzlib.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::loader {
namespace {

using ::testing::HasSubstr;

// An "ELF" of `size` bytes: the magic, then a pattern that compresses but not to nothing.
std::vector<uint8_t> FakeElf(size_t size) {
  std::vector<uint8_t> bytes(size);
  uint32_t state = 12345;
  for (size_t i = 0; i < size; ++i) {
    state = state * 1103515245 + 12345;
    bytes[i] = (i % 7 == 0) ? static_cast<uint8_t>(state >> 24) : static_cast<uint8_t>(i / 4096);
  }
  std::memcpy(bytes.data(), "\x7f" "ELF", 4);
  return bytes;
}

void AppendSize(std::vector<uint8_t>& out, uint32_t size) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(size >> (8 * i)));
}

// Each format as the kernel's build writes it, with the decompressed size appended (gzip's own
// trailer already ends with it).
std::vector<uint8_t> Compress(Compression compression, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out;
  switch (compression) {
    case Compression::kGzip: {
      z_stream stream{};
      EXPECT_EQ(deflateInit2(&stream, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
      out.resize(deflateBound(&stream, data.size()));
      stream.next_in = const_cast<Bytef*>(data.data());
      stream.avail_in = data.size();
      stream.next_out = out.data();
      stream.avail_out = out.size();
      EXPECT_EQ(deflate(&stream, Z_FINISH), Z_STREAM_END);
      out.resize(stream.total_out);
      deflateEnd(&stream);
      return out;
    }
    case Compression::kXz:
    case Compression::kLzma: {
      out.resize(data.size() + data.size() / 2 + 4096);
      size_t used = 0;
      if (compression == Compression::kXz) {
        EXPECT_EQ(lzma_easy_buffer_encode(1, LZMA_CHECK_CRC32, nullptr, data.data(), data.size(), out.data(), &used,
                                          out.size()),
                  LZMA_OK);
      } else {
        lzma_options_lzma options;
        lzma_lzma_preset(&options, 1);
        lzma_stream stream = LZMA_STREAM_INIT;
        EXPECT_EQ(lzma_alone_encoder(&stream, &options), LZMA_OK);
        stream.next_in = data.data();
        stream.avail_in = data.size();
        stream.next_out = out.data();
        stream.avail_out = out.size();
        EXPECT_EQ(lzma_code(&stream, LZMA_FINISH), LZMA_STREAM_END);
        used = stream.total_out;
        lzma_end(&stream);
      }
      out.resize(used);
      break;
    }
    case Compression::kZstd:
      out.resize(ZSTD_compressBound(data.size()));
      out.resize(ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3));
      break;
    case Compression::kLz4Legacy: {
      out = {0x02, 0x21, 0x4c, 0x18};
      constexpr size_t kBlock = 8 << 20;
      for (size_t at = 0; at < data.size(); at += kBlock) {
        const int length = static_cast<int>(std::min(kBlock, data.size() - at));
        std::vector<char> block(LZ4_compressBound(length));
        const int size = LZ4_compress_default(reinterpret_cast<const char*>(data.data() + at), block.data(), length,
                                              block.size());
        AppendSize(out, size);
        out.insert(out.end(), block.begin(), block.begin() + size);
      }
      break;
    }
    case Compression::kBzip2: {
      unsigned size = data.size() + data.size() / 100 + 600;
      out.resize(size);
      EXPECT_EQ(BZ2_bzBuffToBuffCompress(reinterpret_cast<char*>(out.data()), &size,
                                         const_cast<char*>(reinterpret_cast<const char*>(data.data())), data.size(), 1,
                                         0, 0),
                BZ_OK);
      out.resize(size);
      break;
    }
    case Compression::kNone:
      return data;
  }
  AppendSize(out, data.size());
  return out;
}

// A bzImage: one setup sector, the boot sector's setup header, then the payload after a stub.
std::vector<uint8_t> BzImage(const std::vector<uint8_t>& payload, uint16_t version = 0x020f) {
  constexpr uint32_t kStub = 0x400;  // decompressor code before the payload
  std::vector<uint8_t> file(2 * 512 + kStub, 0);
  file[0x1f1] = 1;
  std::memcpy(file.data() + 0x202, "HdrS", 4);
  std::memcpy(file.data() + 0x206, &version, 2);
  const uint32_t length = payload.size();
  std::memcpy(file.data() + 0x248, &kStub, 4);
  std::memcpy(file.data() + 0x24c, &length, 4);
  file.insert(file.end(), payload.begin(), payload.end());
  file.resize(file.size() + 64, 0xcc);  // the bzImage's trailer after the payload
  return file;
}

class EveryCompression : public ::testing::TestWithParam<Compression> {};

TEST_P(EveryCompression, BzImagePayloadDecompressesToItsElf) {
  // Over 8 MiB: lz4's legacy frame needs two blocks.
  const std::vector<uint8_t> elf = FakeElf((9 << 20) + 12345);
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(Compress(GetParam(), elf)));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->elf == elf);
  EXPECT_THAT(image->description, HasSubstr("bzImage (boot protocol 2.15"));
  EXPECT_THAT(image->description, HasSubstr(CompressionName(GetParam())));
}

TEST_P(EveryCompression, TruncatedPayloadIsRefused) {
  const std::vector<uint8_t> elf = FakeElf(1 << 20);
  std::vector<uint8_t> payload = Compress(GetParam(), elf);
  payload.resize(payload.size() / 2);
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(payload));
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("does not decompress"));
}

TEST_P(EveryCompression, OutputBeyondTheLimitIsRefused) {
  const std::vector<uint8_t> elf = FakeElf(2 << 20);
  absl::StatusOr<std::vector<uint8_t>> out = Decompress(GetParam(), Compress(GetParam(), elf), 1 << 20);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().message(), HasSubstr("more than 1 MiB"));
}

TEST_P(EveryCompression, WholeCompressedElfIsTaken) {
  const std::vector<uint8_t> elf = FakeElf(300000);
  absl::StatusOr<KernelImage> image = ExtractElfKernel(Compress(GetParam(), elf));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->elf == elf);
}

INSTANTIATE_TEST_SUITE_P(Formats, EveryCompression,
                         ::testing::Values(Compression::kGzip, Compression::kXz, Compression::kLzma,
                                           Compression::kZstd, Compression::kLz4Legacy, Compression::kBzip2),
                         [](const auto& info) { return std::string(CompressionName(info.param)); });

// Found by the loader fuzzer: an lzma header asking for a ~900 MiB dictionary made liblzma allocate it.
TEST(KernelImageTest, HugeLzmaDictionaryIsRefusedBeforeItIsAllocated) {
  const std::vector<uint8_t> header = {0x5d, 0x00, 0x00, 0x2b, 0xfd, 0x37, 0x00, 0xe3, 0x10, 0x00,
                                       0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xad, 0x00};
  absl::StatusOr<KernelImage> image = ExtractElfKernel(header);
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("more than 128 MiB"));
}

TEST(KernelImageTest, ElfIsTakenAsItIs) {
  const std::vector<uint8_t> elf = FakeElf(5000);
  absl::StatusOr<KernelImage> image = ExtractElfKernel(elf);
  ASSERT_TRUE(image.ok());
  EXPECT_TRUE(image->elf == elf);
  EXPECT_EQ(image->description, "ELF");
}

TEST(KernelImageTest, UncompressedBzImagePayload) {
  const std::vector<uint8_t> elf = FakeElf(5000);
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(elf));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->elf == elf);
}

TEST(KernelImageTest, OldBootProtocolIsRefused) {
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(FakeElf(5000), 0x0206));
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("boot protocol 2.06"));
}

TEST(KernelImageTest, HeaderCutAfterItsMagicIsRefused) {
  std::vector<uint8_t> file = BzImage(FakeElf(5000));
  file.resize(0x206);  // "HdrS" and nothing after it
  EXPECT_THAT(ExtractElfKernel(file).status().message(), HasSubstr("truncated bzImage setup header"));
  file.resize(0x207);
  EXPECT_THAT(ExtractElfKernel(file).status().message(), HasSubstr("truncated bzImage setup header"));
}

TEST(KernelImageTest, PayloadOutsideTheFileIsRefused) {
  std::vector<uint8_t> file = BzImage(FakeElf(5000));
  const uint32_t huge = 0xfffffff0;
  std::memcpy(file.data() + 0x248, &huge, 4);
  EXPECT_THAT(ExtractElfKernel(file).status().message(), HasSubstr("outside the"));
  file = BzImage(FakeElf(5000));
  std::memcpy(file.data() + 0x24c, &huge, 4);
  EXPECT_THAT(ExtractElfKernel(file).status().message(), HasSubstr("outside the"));
}

TEST(KernelImageTest, UnknownPayloadCompressionIsNamed) {
  std::vector<uint8_t> payload = {0x89, 'L', 'Z', 'O', 0, 0, 0, 0};
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(payload));
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("magic 89 4c 5a 4f"));
}

TEST(KernelImageTest, PayloadThatIsNoElfIsRefused) {
  std::vector<uint8_t> not_elf(100000, 'x');
  absl::StatusOr<KernelImage> image = ExtractElfKernel(BzImage(Compress(Compression::kGzip, not_elf)));
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("not an ELF"));
}

TEST(KernelImageTest, OtherFilesAreRefusedSayingWhatIsExpected) {
  std::vector<uint8_t> text(1000, 'a');
  EXPECT_THAT(ExtractElfKernel(text).status().message(), HasSubstr("neither an ELF kernel"));
  EXPECT_THAT(ExtractElfKernel({}).status().message(), HasSubstr("neither an ELF kernel"));
}

}  // namespace
}  // namespace xenkvm::loader
