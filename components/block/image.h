// A disk image file for the block backends: opened, claimed and locked, its size, and the open
// file the backends' I/O engines (io_engine.h) read and write. Errors name the file.
#ifndef XENKVM_COMPONENTS_BLOCK_IMAGE_H_
#define XENKVM_COMPONENTS_BLOCK_IMAGE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "components/base/fd.h"

namespace xenkvm::block {

inline constexpr uint32_t kSectorSize = 512;

// How the host caches the image, as QEMU's cache= names it.
enum class CacheMode {
  kWriteback,  // the host's page cache; a guest flush is an fdatasync
  kNone,       // O_DIRECT: no host copy; a guest flush still flushes the device's cache
};
// "writeback" / "none"; kInvalidArgument naming both otherwise.
absl::StatusOr<CacheMode> ParseCacheMode(std::string_view text);
const char* CacheModeName(CacheMode mode);

class Image {
 public:
  // Opens `path` (a regular file or a block device) for reading, and writing unless `read_only`.
  // kNotFound / kPermissionDenied / kInvalidArgument with the path and the reason.
  static absl::StatusOr<std::unique_ptr<Image>> Open(const std::string& path, bool read_only,
                                                      CacheMode cache = CacheMode::kWriteback);
  // Open's half that opens, claims and locks the file, for a process that hands it to another
  // (xenkvmd to a VMM that cannot open it: unprivileged or confined); that one calls Adopt.
  static absl::StatusOr<base::Fd> OpenFile(const std::string& path, bool read_only);
  // An image over a file opened by OpenFile, here or in another process; `path` names it in
  // messages. kInvalidArgument when the file is not opened for writing and `read_only` is false,
  // or when CacheMode::kNone is asked of a file system without O_DIRECT.
  static absl::StatusOr<std::unique_ptr<Image>> Adopt(const std::string& path, base::Fd fd, bool read_only,
                                                       CacheMode cache = CacheMode::kWriteback);

  uint64_t size_bytes() const { return size_bytes_; }
  uint64_t sectors() const { return size_bytes_ / kSectorSize; }
  bool read_only() const { return read_only_; }
  // Whether discards can punch holes here (a writable regular file).
  bool supports_discard() const { return supports_discard_; }
  CacheMode cache() const { return cache_; }
  // The smallest I/O (size and alignment, bytes) the file takes: 512, or with kNone the direct-I/O
  // alignment of its file system or device (4096 on 4Kn storage). Backends report it to guests.
  uint32_t logical_block_size() const { return logical_block_size_; }
  const std::string& path() const { return path_; }
  // The open file, for I/O engines; owned by the image.
  int fd() const { return fd_.get(); }

 private:
  Image(std::string path, base::Fd fd, uint64_t size_bytes, bool read_only, bool supports_discard, CacheMode cache,
        uint32_t logical_block_size)
      : path_(std::move(path)), fd_(std::move(fd)), size_bytes_(size_bytes), read_only_(read_only),
        supports_discard_(supports_discard), cache_(cache), logical_block_size_(logical_block_size) {}

  const std::string path_;
  const base::Fd fd_;
  const uint64_t size_bytes_;
  const bool read_only_;
  const bool supports_discard_;
  const CacheMode cache_;
  const uint32_t logical_block_size_;
};

}  // namespace xenkvm::block

#endif  // XENKVM_COMPONENTS_BLOCK_IMAGE_H_
