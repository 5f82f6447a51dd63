#include "components/block/image.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "components/block/image_lock.h"

namespace xenkvm::block {
namespace {

absl::Status Errno(const std::string& what, int error) {
  std::string message = absl::StrCat(what, ": ", std::strerror(error));
  switch (error) {
    case ENOENT: return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS: return absl::PermissionDeniedError(message);
    case ENOSPC: return absl::ResourceExhaustedError(message);
    default: return absl::InternalError(message);
  }
}

// A block device written by a guest must not be in use on the host: reopened with O_EXCL, which
// the kernel refuses (EBUSY) while the device is mounted, holds a swap area or is part of a
// device-mapper or RAID set. Regular files come back as they are.
absl::StatusOr<base::Fd> ClaimBlockDevice(base::Fd fd, const std::string& path) {
  struct stat info {};
  if (fstat(fd.get(), &info) != 0 || !S_ISBLK(info.st_mode)) return fd;
  base::Fd claimed(open(absl::StrCat("/proc/self/fd/", fd.get()).c_str(), O_RDWR | O_EXCL | O_CLOEXEC));
  if (claimed.valid()) return claimed;
  if (errno == EBUSY) {
    return absl::FailedPreconditionError(absl::StrCat(
        "disk image ", path, " is a block device the host is using (mounted, swap, or claimed by another "
        "driver): unmount or release it first, or attach it read-only"));
  }
  return Errno(absl::StrCat("disk image ", path, ": reopening it exclusively"), errno);
}

// cache=none: O_DIRECT on the open file (the flag may change after open), and the alignment it then
// needs: the device's logical block size, or for a file the smallest power of two from 512 up
// that a direct read at offset 0 accepts (a file system on 4Kn storage refuses 512).
absl::StatusOr<uint32_t> EnableDirectIo(int fd, const std::string& path, bool block_device) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_DIRECT) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": cache=none needs O_DIRECT, which its file "
                                                   "system refuses (", std::strerror(errno),
                                                   "); use cache=writeback"));
  }
  if (block_device) {
    int size = 0;
    if (ioctl(fd, BLKSSZGET, &size) != 0 || size < static_cast<int>(kSectorSize) || size > 4096) {
      return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": no usable logical block size"));
    }
    return static_cast<uint32_t>(size);
  }
  void* buffer = nullptr;
  if (posix_memalign(&buffer, 4096, 4096) != 0) return absl::ResourceExhaustedError("no memory for a 4 KiB buffer");
  uint32_t found = 0;
  for (uint32_t size = kSectorSize; size <= 4096 && found == 0; size *= 2) {
    const ssize_t n = pread(fd, buffer, size, 0);
    if (n >= 0 || errno != EINVAL) found = size;
  }
  free(buffer);
  if (found == 0) {
    return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": direct reads fail at every alignment up to "
                                                   "4096; use cache=writeback"));
  }
  return found;
}

}  // namespace

absl::StatusOr<CacheMode> ParseCacheMode(std::string_view text) {
  if (text == "writeback") return CacheMode::kWriteback;
  if (text == "none") return CacheMode::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("cache=", std::string(text), " is not writeback (the host's page cache) or none (O_DIRECT)"));
}

const char* CacheModeName(CacheMode mode) { return mode == CacheMode::kNone ? "none" : "writeback"; }

absl::StatusOr<std::unique_ptr<Image>> Image::Open(const std::string& path, bool read_only, CacheMode cache) {
  XENKVM_ASSIGN_OR_RETURN(base::Fd fd, OpenFile(path, read_only));
  return Adopt(path, std::move(fd), read_only, cache);
}

absl::StatusOr<base::Fd> Image::OpenFile(const std::string& path, bool read_only) {
  base::Fd fd(open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!fd.valid()) return Errno(absl::StrCat("disk image ", path), errno);
  if (!read_only) {
    XENKVM_ASSIGN_OR_RETURN(fd, ClaimBlockDevice(std::move(fd), path));
  }
  struct stat info {};
  if (fstat(fd.get(), &info) != 0) return Errno(absl::StrCat("disk image ", path, ": fstat"), errno);
  if (!S_ISREG(info.st_mode) && !S_ISBLK(info.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": not a regular file or a block device"));
  }
  if (absl::Status locked = LockImage(fd.get(), path, /*exclusive=*/!read_only); !locked.ok()) return locked;
  return fd;
}

absl::StatusOr<std::unique_ptr<Image>> Image::Adopt(const std::string& path, base::Fd fd, bool read_only,
                                                     CacheMode cache) {
  const int mode = fcntl(fd.get(), F_GETFL);
  if (mode < 0) return Errno(absl::StrCat("disk image ", path, ": F_GETFL"), errno);
  if (!read_only && (mode & O_ACCMODE) == O_RDONLY) {
    return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": opened read-only, attached read-write"));
  }
  struct stat info {};
  if (fstat(fd.get(), &info) != 0) return Errno(absl::StrCat("disk image ", path, ": fstat"), errno);
  uint64_t size = 0;
  bool discard = false;
  if (S_ISREG(info.st_mode)) {
    size = static_cast<uint64_t>(info.st_size);
    discard = !read_only;
  } else if (S_ISBLK(info.st_mode)) {
    if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
      return Errno(absl::StrCat("disk image ", path, ": BLKGETSIZE64"), errno);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("disk image ", path, ": not a regular file or a block device"));
  }
  if (size < kSectorSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk image ", path, ": ", size, " bytes, smaller than one 512-byte sector"));
  }
  // Taken already when OpenFile made this file description; taking it again on it is a no-op.
  if (absl::Status locked = LockImage(fd.get(), path, /*exclusive=*/!read_only); !locked.ok()) return locked;
  uint32_t block_size = kSectorSize;
  if (cache == CacheMode::kNone) {
    XENKVM_ASSIGN_OR_RETURN(block_size, EnableDirectIo(fd.get(), path, S_ISBLK(info.st_mode)));
  }
  return std::unique_ptr<Image>(new Image(path, std::move(fd), size, read_only, discard, cache, block_size));
}

}  // namespace xenkvm::block
