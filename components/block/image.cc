#include "components/block/image.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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

}  // namespace

absl::StatusOr<std::unique_ptr<Image>> Image::Open(const std::string& path, bool read_only) {
  XENKVM_ASSIGN_OR_RETURN(base::Fd fd, OpenFile(path, read_only));
  return Adopt(path, std::move(fd), read_only);
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

absl::StatusOr<std::unique_ptr<Image>> Image::Adopt(const std::string& path, base::Fd fd, bool read_only) {
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
  return std::unique_ptr<Image>(new Image(path, std::move(fd), size, read_only, discard));
}

absl::Status Image::Read(uint64_t offset, std::span<uint8_t> buffer) const {
  size_t done = 0;
  while (done < buffer.size()) {
    ssize_t n = pread(fd_.get(), buffer.data() + done, buffer.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat(path_, ": read at ", offset + done), errno);
    if (n == 0) return absl::OutOfRangeError(absl::StrCat(path_, ": read past the end at ", offset + done));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status Image::Write(uint64_t offset, std::span<const uint8_t> buffer) const {
  if (read_only_) return absl::PermissionDeniedError(absl::StrCat(path_, ": opened read-only"));
  size_t done = 0;
  while (done < buffer.size()) {
    ssize_t n = pwrite(fd_.get(), buffer.data() + done, buffer.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno(absl::StrCat(path_, ": write at ", offset + done), n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status Image::Flush() const {
  if (fdatasync(fd_.get()) != 0) return Errno(absl::StrCat(path_, ": fdatasync"), errno);
  return absl::OkStatus();
}

absl::Status Image::Discard(uint64_t offset, uint64_t length) const {
  if (!supports_discard_) return absl::FailedPreconditionError(absl::StrCat(path_, ": discard is not supported"));
  if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0) {
    return Errno(absl::StrCat(path_, ": discard of ", length, " bytes at ", offset), errno);
  }
  return absl::OkStatus();
}

}  // namespace xenkvm::block
