#include "api/console_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

namespace xenkvm::api {

void ConsoleBuffer::Append(const char* data, size_t size) {
  absl::MutexLock lock(&mutex_);
  bytes_.insert(bytes_.end(), data, data + size);
  while (bytes_.size() > limit_) bytes_.pop_front();
  total_ += size;
}

std::string ConsoleBuffer::ReadFrom(uint64_t& offset) const {
  absl::MutexLock lock(&mutex_);
  const uint64_t first = total_ - bytes_.size();
  if (offset < first) offset = first;
  std::string out(bytes_.begin() + static_cast<std::ptrdiff_t>(offset - first), bytes_.end());
  offset = total_;
  return out;
}

uint64_t ConsoleBuffer::total() const {
  absl::MutexLock lock(&mutex_);
  return total_;
}

void ConsoleBuffer::WaitBeyond(uint64_t offset, absl::Duration timeout) const {
  absl::MutexLock lock(&mutex_);
  auto more = [this, offset]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return total_ > offset; };
  mutex_.AwaitWithTimeout(absl::Condition(&more), timeout);
}

ConsoleLogFollower::ConsoleLogFollower(std::string path, ConsoleBuffer& buffer, uint64_t cap)
    : path_(std::move(path)), buffer_(buffer), cap_(cap) {}

ConsoleLogFollower::~ConsoleLogFollower() {
  if (fd_ >= 0) close(fd_);
}

void ConsoleLogFollower::Poll() {
  if (fd_ < 0) {
    fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return;  // not written yet
  }
  struct stat info {};
  if (fstat(fd_, &info) == 0 && static_cast<uint64_t>(info.st_size) < offset_) offset_ = 0;  // truncated
  char chunk[16384];
  while (true) {
    const ssize_t n = pread(fd_, chunk, sizeof chunk, static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer_.Append(chunk, static_cast<size_t>(n));
    offset_ += static_cast<uint64_t>(n);
  }
  if (offset_ > cap_) Rotate();
}

void ConsoleLogFollower::Rotate() {
  std::error_code ignored;
  std::filesystem::copy_file(path_, path_ + ".1", std::filesystem::copy_options::overwrite_existing, ignored);
  if (truncate(path_.c_str(), 0) == 0) offset_ = 0;
}

}  // namespace xenkvm::api
