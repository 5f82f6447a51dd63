// Asynchronous I/O on one open image file, for a backend that keeps many requests in flight: reads
// and writes straight between the file and the caller's buffers (guest pages), data flushes and
// discards, batched submission, and completions signalled on a file descriptor the caller polls.
//
// Two engines behind one interface: io_uring (liburing) where the kernel offers it and the
// operations needed, else a small thread pool doing the same with preadv/pwritev/fdatasync/
// fallocate. NewIoEngine picks, and says why it fell back.
//
// Not thread-safe: one thread at a time enqueues, submits and reaps (a disk ring's serving
// thread: its own, or a kicker while it sleeps, under the ring's lock).
#ifndef XENKVM_COMPONENTS_BLOCK_IO_ENGINE_H_
#define XENKVM_COMPONENTS_BLOCK_IO_ENGINE_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace xenkvm::block {

enum class IoOperation {
  kRead,     // into `buffers`, from `offset`
  kWrite,    // from `buffers`, at `offset`
  kFlush,    // fdatasync; a barrier: starts once everything submitted before it has completed, and
             // what is submitted after it starts once it has completed
  kDiscard,  // punches [offset, offset + length): later reads give zeros
};

struct IoRequest {
  IoOperation operation = IoOperation::kRead;
  uint64_t offset = 0;
  uint64_t length = 0;         // kDiscard only
  std::vector<iovec> buffers;  // kRead/kWrite; the memory must stay valid until the completion is reaped
  uint64_t tag = 0;            // the caller's, given back with the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int error = 0;  // 0: all of it done; else an errno (EIO for a read past the end of the file)
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;

  // Queues `request`; it may start at once (io_uring with O_DIRECT), and has started once Submit()
  // returns. kResourceExhausted when depth() requests are queued or in flight already (a caller
  // bounds itself by depth()).
  virtual absl::Status Enqueue(IoRequest request) = 0;
  // Starts everything queued and not started, in one system call where the engine can.
  virtual absl::Status Submit() = 0;
  // An eventfd, readable (poll) when completions may be waiting. The caller drains it (reads its
  // counter) before reaping, so a completion after the Reap signals it again. What Submit
  // completed itself (io_uring's page-cache reads and writes) is not signalled: a caller looks
  // with HasCompletions() before it sleeps on this.
  virtual int completion_fd() const = 0;
  // Whether completions are waiting, without a system call: for a caller that polls briefly
  // before it sleeps, and the only sign of completions Submit made.
  virtual bool HasCompletions() const = 0;
  // Appends the completions ready now to `out`, without blocking or draining completion_fd();
  // short transfers have been continued to the end first. Returns how many were appended.
  virtual size_t Reap(std::vector<IoCompletion>* out) = 0;
  // Whether Submit itself does the reads the page cache holds (io_uring without O_DIRECT): they
  // have completed when it returns, so a caller may do them on a thread it must not stall long.
  virtual bool ReadsCachedDataInline() const = 0;
  // Requests enqueued and not yet reaped.
  virtual uint32_t in_flight() const = 0;
  virtual uint32_t depth() const = 0;
  virtual std::string_view name() const = 0;  // "io_uring" or "threads"
};

// io_uring on `fd` (not owned; must outlive the engine) with room for `depth` requests.
// kUnavailable with the kernel's reason when io_uring cannot be set up or lacks an operation.
absl::StatusOr<std::unique_ptr<IoEngine>> NewUringEngine(int fd, uint32_t depth);
// `threads` workers on `fd` (not owned) with room for `depth` requests.
absl::StatusOr<std::unique_ptr<IoEngine>> NewThreadPoolEngine(int fd, uint32_t depth, uint32_t threads);

enum class EngineChoice { kAuto, kUring, kThreads };
// kAuto: io_uring, else the thread pool, logging once per process why io_uring was not used.
absl::StatusOr<std::unique_ptr<IoEngine>> NewIoEngine(int fd, uint32_t depth, EngineChoice choice = EngineChoice::kAuto);

}  // namespace xenkvm::block

#endif  // XENKVM_COMPONENTS_BLOCK_IO_ENGINE_H_
