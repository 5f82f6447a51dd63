// The VM's hypervisor log, as `xl dmesg` shows Xen's: what the guest writes with console_io
// (CONSOLEIO_write), line by line, each prefixed "(d<domid>) " as Xen does, kept apart from the
// guest's own console. Bounded: the oldest bytes go first, and the count of dropped bytes is kept.
// Each complete line is also written to the VMM's log. Thread-safe.
#ifndef XENKVM_VMM_HYPERVISOR_LOG_H_
#define XENKVM_VMM_HYPERVISOR_LOG_H_

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace xenkvm::vmm {

class HypervisorLog {
 public:
  static constexpr size_t kCapacity = 64 * 1024;  // bytes kept
  static constexpr size_t kMaxLine = 256;         // a longer line is cut there, as Xen's buffer

  explicit HypervisorLog(uint32_t domid) : domid_(domid) {}

  // One byte from the guest's console_io.
  void Append(uint8_t byte);

  struct Contents {
    std::string text;
    uint64_t dropped_bytes = 0;
  };
  // What is kept (with the line still being written, if any); `clear` empties it afterwards (xl dmesg -c).
  Contents Read(bool clear);

 private:
  void EndLineLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const uint32_t domid_;
  absl::Mutex mutex_;
  std::string line_ ABSL_GUARDED_BY(mutex_);
  std::deque<char> kept_ ABSL_GUARDED_BY(mutex_);
  uint64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_HYPERVISOR_LOG_H_
