#include "vmm/console_log.h"

#include <unistd.h>

#include <cerrno>

namespace xenkvm::vmm {

void ConsoleLog::Append(uint8_t byte) {
  absl::MutexLock lock(&mutex_);
  ++total_;
  replay_.push_back(static_cast<char>(byte));
  if (replay_.size() > replay_limit_) replay_.pop_front();
  line_.push_back(static_cast<char>(byte));
  if (byte == '\n' || line_.size() >= 4096) FlushLocked();
}

void ConsoleLog::Flush() {
  absl::MutexLock lock(&mutex_);
  FlushLocked();
}

void ConsoleLog::FlushLocked() {
  if (fd_ >= 0) {
    size_t done = 0;
    while (done < line_.size()) {
      ssize_t n = write(fd_, line_.data() + done, line_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // a closed stdout must not stop the guest
      done += static_cast<size_t>(n);
    }
  }
  line_.clear();
}

std::string ConsoleLog::Replay() const {
  absl::MutexLock lock(&mutex_);
  return std::string(replay_.begin(), replay_.end());
}

uint64_t ConsoleLog::total_bytes() const {
  absl::MutexLock lock(&mutex_);
  return total_;
}

}  // namespace xenkvm::vmm
