// Finds the ELF kernel in a file as distributions ship it: an ELF vmlinux is taken as it is; a
// bzImage (vmlinuz) has its payload located through the x86 boot protocol's setup header and
// decompressed with the system's libraries (zlib, liblzma, libzstd, liblz4, libbz2). Xen's own
// toolstack boots PVH bzImages the same way: the PVH entry is in the compressed ELF's notes.
#ifndef XENKVM_COMPONENTS_LOADER_KERNEL_IMAGE_H_
#define XENKVM_COMPONENTS_LOADER_KERNEL_IMAGE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace xenkvm::loader {

// The largest kernel accepted, compressed or not.
inline constexpr uint64_t kMaxKernelBytes = uint64_t{1} << 30;

enum class Compression { kNone, kGzip, kXz, kLzma, kZstd, kLz4Legacy, kBzip2 };
const char* CompressionName(Compression compression);

// The compression `data` starts with (by its magic), kNone when none is recognised.
Compression DetectCompression(std::span<const uint8_t> data);

// Decompresses one stream of `compression`, stopping at its end (a bzImage payload carries the
// decompressed size after it). Refuses output beyond `max_output` bytes, corrupt or truncated input.
absl::StatusOr<std::vector<uint8_t>> Decompress(Compression compression, std::span<const uint8_t> input,
                                                uint64_t max_output = kMaxKernelBytes);

// A boot file (kernel, initrd) read whole: a regular file of at most `limit` bytes. Devices and
// FIFOs are refused before any read (/dev/zero would never end, a FIFO could block for ever).
// Errors start with `what` and name the path.
absl::StatusOr<std::vector<uint8_t>> ReadBootFile(const char* what, const std::string& path, uint64_t limit);

struct KernelImage {
  std::vector<uint8_t> elf;
  std::string description;  // "ELF" or "bzImage (boot protocol 2.15, lz4 payload)"
};

// The ELF inside `file`: `file` itself when it is an ELF; the payload of a bzImage (boot protocol
// 2.08 or later, which says where it is); a whole file compressed in a known format. Anything else
// is refused, saying what it is not.
absl::StatusOr<KernelImage> ExtractElfKernel(std::vector<uint8_t> file);

}  // namespace xenkvm::loader

#endif  // XENKVM_COMPONENTS_LOADER_KERNEL_IMAGE_H_
