// A VM's console as the daemon serves it: the VMM appends the guest's output to console.log in
// the VM's directory (a file, so that it survives the daemon), and the daemon follows that file
// into a ConsoleBuffer, which StreamConsole readers follow in turn.
#ifndef XENKVM_API_CONSOLE_LOG_H_
#define XENKVM_API_CONSOLE_LOG_H_

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace xenkvm::api {

// Bytes a guest wrote, the last `limit` kept, with a running offset so followers see only new data.
class ConsoleBuffer {
 public:
  explicit ConsoleBuffer(size_t limit = 64 * 1024) : limit_(limit) {}
  void Append(const char* data, size_t size);
  // The bytes from `offset` (total bytes ever written), clipped to what is kept; updates `offset`.
  std::string ReadFrom(uint64_t& offset) const;
  uint64_t total() const;
  // Waits up to `timeout` for bytes beyond `offset`.
  void WaitBeyond(uint64_t offset, absl::Duration timeout) const;

 private:
  const size_t limit_;
  mutable absl::Mutex mutex_;
  std::deque<char> bytes_ ABSL_GUARDED_BY(mutex_);
  uint64_t total_ ABSL_GUARDED_BY(mutex_) = 0;
};

// Follows a console log file from its start into a buffer. The file is capped: past `cap` bytes
// its content moves to PATH.1 and the file starts again (bytes the VMM appends between the copy
// and the truncation are lost: a few at most).
class ConsoleLogFollower {
 public:
  ConsoleLogFollower(std::string path, ConsoleBuffer& buffer, uint64_t cap = 1 << 20);
  ~ConsoleLogFollower();
  ConsoleLogFollower(const ConsoleLogFollower&) = delete;
  ConsoleLogFollower& operator=(const ConsoleLogFollower&) = delete;
  // Reads what was appended since the last call.
  void Poll();

 private:
  void Rotate();
  const std::string path_;
  ConsoleBuffer& buffer_;
  const uint64_t cap_;
  int fd_ = -1;
  uint64_t offset_ = 0;
};

}  // namespace xenkvm::api

#endif  // XENKVM_API_CONSOLE_LOG_H_
