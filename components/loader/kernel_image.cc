#include "components/loader/kernel_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_format.h"
#include "components/base/fd.h"

namespace xenkvm::loader {
namespace {

// The x86 boot protocol's setup header (Documentation/arch/x86/boot.rst): offsets in the file.
constexpr size_t kSetupSectsAt = 0x1f1;
constexpr size_t kHeaderMagicAt = 0x202;  // "HdrS"
constexpr size_t kVersionAt = 0x206;
constexpr size_t kPayloadOffsetAt = 0x248;  // from the protected-mode code; protocol 2.08+
constexpr size_t kPayloadLengthAt = 0x24c;
constexpr uint16_t kPayloadVersion = 0x0208;

template <typename T>
std::optional<T> ReadAt(std::span<const uint8_t> file, size_t at) {
  if (at > file.size() || file.size() - at < sizeof(T)) return std::nullopt;
  T value;
  std::memcpy(&value, file.data() + at, sizeof(T));
  return value;
}

bool IsElf(std::span<const uint8_t> file) {
  return file.size() >= 4 && file[0] == 0x7f && file[1] == 'E' && file[2] == 'L' && file[3] == 'F';
}

bool IsBzImage(std::span<const uint8_t> file) {
  std::optional<uint32_t> magic = ReadAt<uint32_t>(file, kHeaderMagicAt);
  return magic && std::memcmp(&*magic, "HdrS", 4) == 0;
}

absl::Status Refuse(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("kernel image refused: ", why));
}

absl::StatusOr<KernelImage> FromBzImage(std::span<const uint8_t> file) {
  const std::optional<uint16_t> read_version = ReadAt<uint16_t>(file, kVersionAt);
  if (!read_version) return Refuse("a truncated bzImage setup header");
  const uint16_t version = *read_version;
  if (version < kPayloadVersion) {
    return Refuse(absl::StrFormat(
        "a bzImage of boot protocol %u.%02u, which does not say where its payload is (2.08 or later needed)",
        version >> 8, version & 0xff));
  }
  std::optional<uint8_t> setup_sects = ReadAt<uint8_t>(file, kSetupSectsAt);
  std::optional<uint32_t> payload_offset = ReadAt<uint32_t>(file, kPayloadOffsetAt);
  std::optional<uint32_t> payload_length = ReadAt<uint32_t>(file, kPayloadLengthAt);
  if (!setup_sects || !payload_offset || !payload_length) return Refuse("a truncated bzImage setup header");
  const uint64_t protected_mode_at = (uint64_t{*setup_sects == 0 ? 4u : *setup_sects} + 1) * 512;
  const uint64_t payload_at = protected_mode_at + *payload_offset;
  if (payload_at > file.size() || *payload_length > file.size() - payload_at || *payload_length < 4) {
    return Refuse(absl::StrFormat("the bzImage's payload (%u bytes at %#x) lies outside the %u-byte file",
                                  *payload_length, payload_at, file.size()));
  }
  std::span<const uint8_t> payload = file.subspan(payload_at, *payload_length);
  const std::string what = absl::StrFormat("bzImage (boot protocol %u.%02u", version >> 8, version & 0xff);
  if (IsElf(payload)) return KernelImage{{payload.begin(), payload.end()}, what + ", uncompressed payload)"};
  const Compression compression = DetectCompression(payload);
  if (compression == Compression::kNone) {
    return Refuse(absl::StrFormat(
        "the bzImage's payload is compressed in a format xenkvm does not read (magic %02x %02x %02x %02x; "
        "gzip, xz, lzma, zstd, lz4 and bzip2 are read): rebuild the kernel with one of those",
        payload[0], payload[1], payload[2], payload[3]));
  }
  absl::StatusOr<std::vector<uint8_t>> elf = Decompress(compression, payload);
  if (!elf.ok()) return Refuse(std::string(elf.status().message()));
  if (!IsElf(*elf)) return Refuse("the bzImage's decompressed payload is not an ELF file");
  return KernelImage{std::move(*elf), absl::StrCat(what, ", ", CompressionName(compression), " payload)")};
}

}  // namespace

// A boot file (kernel, initrd) read whole: a regular file of at most `limit` bytes. Devices and
// FIFOs are refused before any read (/dev/zero would never end, a FIFO could block forever).
absl::StatusOr<std::vector<uint8_t>> ReadBootFile(const char* what, const std::string& path, uint64_t limit) {
  base::Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) {
    return absl::NotFoundError(absl::StrFormat("%s: cannot open %s: %s", what, path, std::strerror(errno)));
  }
  struct stat info {};
  if (fstat(fd.get(), &info) != 0 || !S_ISREG(info.st_mode)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s is not a regular file", what, path));
  }
  if (static_cast<uint64_t>(info.st_size) > limit) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s has %u bytes; at most %u MiB are taken", what, path, info.st_size, limit >> 20));
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(info.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = pread(fd.get(), bytes.data() + done, bytes.size() - done, done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      return absl::DataLossError(absl::StrFormat("%s: reading %s failed: %s", what, path,
                                                 got == 0 ? "the file shrank" : std::strerror(errno)));
    }
    done += got;
  }
  return bytes;
}

absl::StatusOr<KernelImage> ExtractElfKernel(std::vector<uint8_t> file) {
  if (IsElf(file)) return KernelImage{std::move(file), "ELF"};
  if (IsBzImage(file)) return FromBzImage(file);
  // A compressed vmlinux (vmlinux.gz and the like), which Xen's toolstack also takes.
  if (const Compression compression = DetectCompression(file); compression != Compression::kNone) {
    absl::StatusOr<std::vector<uint8_t>> elf = Decompress(compression, file);
    if (!elf.ok()) return Refuse(std::string(elf.status().message()));
    if (!IsElf(*elf)) return Refuse(absl::StrCat("the ", CompressionName(compression), "-compressed file holds no ELF kernel"));
    return KernelImage{std::move(*elf), absl::StrCat("ELF (", CompressionName(compression), "-compressed file)")};
  }
  return Refuse("neither an ELF kernel (vmlinux) nor a bzImage (vmlinuz)");
}

}  // namespace xenkvm::loader
