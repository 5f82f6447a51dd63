// The VM's console log: bytes the guest writes to its consoles (serial, debug port; later the Xen
// console and console_io), forwarded to a file descriptor (the VMM's stdout) line by line, and kept
// in a bounded replay buffer for clients that attach later.
#ifndef XENKVM_VMM_CONSOLE_LOG_H_
#define XENKVM_VMM_CONSOLE_LOG_H_

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace xenkvm::vmm {

class ConsoleLog {
 public:
  // `fd` is borrowed (-1: keep only the replay buffer).
  explicit ConsoleLog(int fd, size_t replay_bytes = 64 * 1024) : fd_(fd), replay_limit_(replay_bytes) {}
  ~ConsoleLog() { Flush(); }

  void Append(uint8_t byte);
  // Writes out a partial line (at VM end).
  void Flush();
  // Up to the last `replay_bytes` bytes written so far.
  std::string Replay() const;
  uint64_t total_bytes() const;

 private:
  void FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const int fd_;
  const size_t replay_limit_;
  mutable absl::Mutex mutex_;
  std::string line_ ABSL_GUARDED_BY(mutex_);
  std::deque<char> replay_ ABSL_GUARDED_BY(mutex_);
  uint64_t total_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_CONSOLE_LOG_H_
