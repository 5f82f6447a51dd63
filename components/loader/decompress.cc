// The decompressors behind kernel_image.h: each the format's own library, one stream each.
#include <bzlib.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "components/loader/kernel_image.h"

namespace xenkvm::loader {
namespace {

constexpr uint64_t kFirstOutputChunk = 16 << 20;
// liblzma's own memory (the dictionary, from the stream's header): kernels use up to 32 MiB; a
// hostile header must not make the VMM allocate gigabytes.
constexpr uint64_t kLzmaMemoryLimit = 128 << 20;

absl::Status Corrupt(Compression compression, const std::string& detail) {
  return absl::InvalidArgumentError(
      absl::StrFormat("the kernel's %s payload does not decompress: %s", CompressionName(compression), detail));
}

absl::Status TooLarge(Compression compression, uint64_t max_output) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "the kernel's %s payload decompresses to more than %u MiB", CompressionName(compression), max_output >> 20));
}

// An output buffer that grows up to a limit; `used` bytes are the result.
class Output {
 public:
  explicit Output(uint64_t max) : max_(max) { bytes_.resize(std::min(kFirstOutputChunk, max)); }
  // At least `want` free bytes after the used ones, or as many as the limit leaves; false when
  // none are left. Grows by doubling.
  bool Reserve(size_t want = 1) {
    if (free_size() >= want) return true;
    const uint64_t size = std::min<uint64_t>(std::max<uint64_t>(bytes_.size() * 2, uint64_t{used_} + want), max_);
    if (size > bytes_.size()) bytes_.resize(size);
    return free_size() > 0;
  }
  uint8_t* free_space() { return bytes_.data() + used_; }
  size_t free_size() const { return bytes_.size() - used_; }
  void Produced(size_t count) { used_ += count; }
  std::vector<uint8_t> Take() && {
    bytes_.resize(used_);
    return std::move(bytes_);
  }

 private:
  uint64_t max_;
  std::vector<uint8_t> bytes_;
  size_t used_ = 0;
};

absl::StatusOr<std::vector<uint8_t>> Gunzip(std::span<const uint8_t> input, uint64_t max_output) {
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("zlib: inflateInit2 failed");
  stream.next_in = const_cast<Bytef*>(input.data());
  stream.avail_in = static_cast<uInt>(std::min<size_t>(input.size(), UINT32_MAX));
  Output output(max_output);
  int result = Z_OK;
  while (result != Z_STREAM_END) {
    if (!output.Reserve()) {
      inflateEnd(&stream);
      return TooLarge(Compression::kGzip, max_output);
    }
    stream.next_out = output.free_space();
    stream.avail_out = static_cast<uInt>(std::min<size_t>(output.free_size(), UINT32_MAX));
    const uInt before = stream.avail_out;
    result = inflate(&stream, Z_NO_FLUSH);
    output.Produced(before - stream.avail_out);
    if (result != Z_OK && result != Z_STREAM_END) {
      std::string why = stream.msg ? stream.msg : (result == Z_BUF_ERROR ? "truncated" : "error");
      inflateEnd(&stream);
      return Corrupt(Compression::kGzip, why);
    }
  }
  inflateEnd(&stream);
  return std::move(output).Take();
}

absl::StatusOr<std::vector<uint8_t>> Unxz(Compression compression, std::span<const uint8_t> input,
                                          uint64_t max_output) {
  lzma_stream stream = LZMA_STREAM_INIT;
  lzma_ret init = compression == Compression::kXz ? lzma_stream_decoder(&stream, kLzmaMemoryLimit, 0)
                                                  : lzma_alone_decoder(&stream, kLzmaMemoryLimit);
  if (init != LZMA_OK) return absl::InternalError("liblzma: creating a decoder failed");
  stream.next_in = input.data();
  stream.avail_in = input.size();
  Output output(max_output);
  lzma_ret result = LZMA_OK;
  while (result != LZMA_STREAM_END) {
    if (!output.Reserve()) {
      lzma_end(&stream);
      return TooLarge(compression, max_output);
    }
    stream.next_out = output.free_space();
    stream.avail_out = output.free_size();
    const size_t before = stream.avail_out;
    result = lzma_code(&stream, stream.avail_in ? LZMA_RUN : LZMA_FINISH);
    output.Produced(before - stream.avail_out);
    if (result != LZMA_OK && result != LZMA_STREAM_END) {
      lzma_end(&stream);
      return Corrupt(compression, result == LZMA_BUF_ERROR      ? "truncated"
                                  : result == LZMA_MEMLIMIT_ERROR ? "its dictionary needs more than 128 MiB"
                                                                  : absl::StrFormat("liblzma error %d", result));
    }
  }
  lzma_end(&stream);
  return std::move(output).Take();
}

absl::StatusOr<std::vector<uint8_t>> Unzstd(std::span<const uint8_t> input, uint64_t max_output) {
  ZSTD_DStream* stream = ZSTD_createDStream();
  if (stream == nullptr) return absl::InternalError("libzstd: creating a decoder failed");
  ZSTD_inBuffer in{input.data(), input.size(), 0};
  Output output(max_output);
  size_t result = 1;
  while (result != 0) {
    if (!output.Reserve()) {
      ZSTD_freeDStream(stream);
      return TooLarge(Compression::kZstd, max_output);
    }
    ZSTD_outBuffer out{output.free_space(), output.free_size(), 0};
    const size_t consumed = in.pos;
    result = ZSTD_decompressStream(stream, &out, &in);
    output.Produced(out.pos);
    if (ZSTD_isError(result)) {
      std::string why = ZSTD_getErrorName(result);
      ZSTD_freeDStream(stream);
      return Corrupt(Compression::kZstd, why);
    }
    if (result != 0 && out.pos == 0 && in.pos == consumed && in.pos == in.size) {
      ZSTD_freeDStream(stream);
      return Corrupt(Compression::kZstd, "truncated");
    }
  }
  ZSTD_freeDStream(stream);
  return std::move(output).Take();
}

absl::StatusOr<std::vector<uint8_t>> Bunzip2(std::span<const uint8_t> input, uint64_t max_output) {
  bz_stream stream{};
  if (BZ2_bzDecompressInit(&stream, 0, 0) != BZ_OK) return absl::InternalError("libbz2: init failed");
  stream.next_in = const_cast<char*>(reinterpret_cast<const char*>(input.data()));
  stream.avail_in = static_cast<unsigned>(std::min<size_t>(input.size(), UINT32_MAX));
  Output output(max_output);
  int result = BZ_OK;
  while (result != BZ_STREAM_END) {
    if (!output.Reserve()) {
      BZ2_bzDecompressEnd(&stream);
      return TooLarge(Compression::kBzip2, max_output);
    }
    stream.next_out = reinterpret_cast<char*>(output.free_space());
    stream.avail_out = static_cast<unsigned>(std::min<size_t>(output.free_size(), UINT32_MAX));
    const unsigned before = stream.avail_out;
    const unsigned input_before = stream.avail_in;
    result = BZ2_bzDecompress(&stream);
    output.Produced(before - stream.avail_out);
    const bool stalled = stream.avail_in == 0 && input_before == 0 && before == stream.avail_out;
    if ((result != BZ_OK && result != BZ_STREAM_END) || stalled) {
      BZ2_bzDecompressEnd(&stream);
      return Corrupt(Compression::kBzip2, stalled ? "truncated" : absl::StrFormat("libbz2 error %d", result));
    }
  }
  BZ2_bzDecompressEnd(&stream);
  return std::move(output).Take();
}

// LZ4's legacy frame, as the kernel's build writes it: the magic, then blocks each preceded by its
// compressed size and decompressing to at most 8 MiB. The frame has no end mark: it ends with the
// input (here: before the 4-byte size a bzImage appends).
absl::StatusOr<std::vector<uint8_t>> Unlz4Legacy(std::span<const uint8_t> input, uint64_t max_output) {
  constexpr uint32_t kMagic = 0x184c2102;
  constexpr size_t kBlockMax = 8 << 20;
  auto read32 = [&](size_t at) {
    uint32_t value;
    std::memcpy(&value, input.data() + at, 4);
    return value;
  };
  Output output(max_output);
  size_t at = 4;  // past the magic
  bool any_block = false;
  while (input.size() - at >= 4) {
    const uint32_t block = read32(at);
    if (block == kMagic) {  // concatenated frames
      at += 4;
      continue;
    }
    if (any_block && input.size() - at == 4) break;  // the appended size
    at += 4;
    if (block > input.size() - at || block > static_cast<uint32_t>(LZ4_compressBound(kBlockMax))) {
      return Corrupt(Compression::kLz4Legacy, absl::StrFormat("a block of %u bytes runs past the input", block));
    }
    if (!output.Reserve(kBlockMax)) return TooLarge(Compression::kLz4Legacy, max_output);
    const int capacity = static_cast<int>(std::min(output.free_size(), kBlockMax));
    const int produced = LZ4_decompress_safe(reinterpret_cast<const char*>(input.data() + at),
                                             reinterpret_cast<char*>(output.free_space()), static_cast<int>(block),
                                             capacity);
    if (produced < 0) {
      return capacity < static_cast<int>(kBlockMax) ? TooLarge(Compression::kLz4Legacy, max_output)
                                                     : Corrupt(Compression::kLz4Legacy, "a corrupt block");
    }
    output.Produced(static_cast<size_t>(produced));
    at += block;
    any_block = true;
  }
  if (!any_block) return Corrupt(Compression::kLz4Legacy, "no blocks");
  return std::move(output).Take();
}

}  // namespace

const char* CompressionName(Compression compression) {
  switch (compression) {
    case Compression::kNone:
      return "uncompressed";
    case Compression::kGzip:
      return "gzip";
    case Compression::kXz:
      return "xz";
    case Compression::kLzma:
      return "lzma";
    case Compression::kZstd:
      return "zstd";
    case Compression::kLz4Legacy:
      return "lz4";
    case Compression::kBzip2:
      return "bzip2";
  }
  return "?";
}

Compression DetectCompression(std::span<const uint8_t> data) {
  auto starts = [&](std::initializer_list<uint8_t> magic) {
    return data.size() >= magic.size() && std::equal(magic.begin(), magic.end(), data.begin());
  };
  if (starts({0x1f, 0x8b})) return Compression::kGzip;
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return Compression::kXz;
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return Compression::kZstd;
  if (starts({0x02, 0x21, 0x4c, 0x18})) return Compression::kLz4Legacy;
  if (starts({'B', 'Z', 'h'})) return Compression::kBzip2;
  // The kernel's lzma: properties byte 0x5d, then the dictionary size (little-endian) of 0x....00.
  if (starts({0x5d, 0x00, 0x00})) return Compression::kLzma;
  return Compression::kNone;
}

absl::StatusOr<std::vector<uint8_t>> Decompress(Compression compression, std::span<const uint8_t> input,
                                                uint64_t max_output) {
  switch (compression) {
    case Compression::kGzip:
      return Gunzip(input, max_output);
    case Compression::kXz:
    case Compression::kLzma:
      return Unxz(compression, input, max_output);
    case Compression::kZstd:
      return Unzstd(input, max_output);
    case Compression::kLz4Legacy:
      return Unlz4Legacy(input, max_output);
    case Compression::kBzip2:
      return Bunzip2(input, max_output);
    case Compression::kNone:
      break;
  }
  return absl::InvalidArgumentError("not a compressed stream xenkvm knows (gzip, xz, lzma, zstd, lz4, bzip2)");
}

}  // namespace xenkvm::loader
