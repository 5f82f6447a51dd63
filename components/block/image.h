// A disk image file for the block backends: positioned reads and writes, flush and discard, with
// errors that name the file and the operation. Synchronous; a backend calls it from its own I/O
// thread.
#ifndef XENKVM_COMPONENTS_BLOCK_IMAGE_H_
#define XENKVM_COMPONENTS_BLOCK_IMAGE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "components/base/fd.h"

namespace xenkvm::block {

inline constexpr uint32_t kSectorSize = 512;

class Image {
 public:
  // Opens `path` (a regular file or a block device) for reading, and writing unless `read_only`.
  // kNotFound / kPermissionDenied / kInvalidArgument with the path and the reason.
  static absl::StatusOr<std::unique_ptr<Image>> Open(const std::string& path, bool read_only);
  // Open's half that opens, claims and locks the file, for a process that hands it to another
  // (xenkvmd to a VMM that cannot open it: unprivileged or confined); that one calls Adopt.
  static absl::StatusOr<base::Fd> OpenFile(const std::string& path, bool read_only);
  // An image over a file opened by OpenFile, here or in another process; `path` names it in
  // messages. kInvalidArgument when the file is not opened for writing and `read_only` is false.
  static absl::StatusOr<std::unique_ptr<Image>> Adopt(const std::string& path, base::Fd fd, bool read_only);

  uint64_t size_bytes() const { return size_bytes_; }
  uint64_t sectors() const { return size_bytes_ / kSectorSize; }
  bool read_only() const { return read_only_; }
  // Whether Discard() can punch holes here (a regular file on a file system that supports it).
  bool supports_discard() const { return supports_discard_; }
  const std::string& path() const { return path_; }

  // Whole buffers at byte `offset`; short transfers are retried, an end-of-file read is an error.
  absl::Status Read(uint64_t offset, std::span<uint8_t> buffer) const;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> buffer) const;
  absl::Status Flush() const;
  // Deallocates [offset, offset + length): later reads return zeros.
  absl::Status Discard(uint64_t offset, uint64_t length) const;

 private:
  Image(std::string path, base::Fd fd, uint64_t size_bytes, bool read_only, bool supports_discard)
      : path_(std::move(path)), fd_(std::move(fd)), size_bytes_(size_bytes), read_only_(read_only),
        supports_discard_(supports_discard) {}

  const std::string path_;
  const base::Fd fd_;
  const uint64_t size_bytes_;
  const bool read_only_;
  const bool supports_discard_;
};

}  // namespace xenkvm::block

#endif  // XENKVM_COMPONENTS_BLOCK_IMAGE_H_
