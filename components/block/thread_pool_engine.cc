// The fallback engine: worker threads doing preadv/pwritev/fdatasync/fallocate, completions queued
// for the owner and signalled on an eventfd. A flush is a barrier, as IOSQE_IO_DRAIN makes it on
// io_uring: workers take nothing past it until everything before it is done, then it runs alone.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "components/base/fd.h"
#include "components/block/io_engine.h"
#include "components/block/io_transfer.h"

namespace xenkvm::block {
namespace {

// Runs one request to its end (short transfers continued, EINTR retried): 0 or an errno.
int Perform(int fd, IoTransfer& transfer) {
  IoRequest& request = transfer.request;
  switch (request.operation) {
    case IoOperation::kFlush:
      return fdatasync(fd) == 0 ? 0 : errno;
    case IoOperation::kDiscard:
      return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(request.offset),
                       static_cast<off_t>(request.length)) == 0
                 ? 0
                 : errno;
    case IoOperation::kRead:
    case IoOperation::kWrite:
      while (transfer.vector_count() > 0) {
        const ssize_t moved =
            request.operation == IoOperation::kRead
                ? preadv(fd, transfer.vectors(), transfer.vector_count(), static_cast<off_t>(request.offset))
                : pwritev(fd, transfer.vectors(), transfer.vector_count(), static_cast<off_t>(request.offset));
        if (moved < 0 && errno == EINTR) continue;
        if (moved < 0) return errno;
        if (moved == 0) return EIO;  // the end of the file
        if (!transfer.Advance(static_cast<size_t>(moved))) break;
      }
      return 0;
  }
  return EINVAL;
}

class ThreadPoolEngine final : public IoEngine {
 public:
  ThreadPoolEngine(int fd, uint32_t depth, base::Fd event) : fd_(fd), depth_(depth), event_(std::move(event)) {}

  void StartWorkers(uint32_t threads) {
    for (uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { Work(); });
  }

  ~ThreadPoolEngine() override {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    for (std::thread& worker : workers_) worker.join();
  }

  absl::Status Enqueue(IoRequest request) override {
    if (in_flight_ >= depth_) return absl::ResourceExhaustedError(absl::StrCat("I/O threads: ", depth_, " requests in flight"));
    ++in_flight_;
    staged_.push_back(IoTransfer{std::move(request), 0});
    return absl::OkStatus();
  }

  absl::Status Submit() override {
    if (staged_.empty()) return absl::OkStatus();
    absl::MutexLock lock(&mutex_);
    for (IoTransfer& transfer : staged_) queue_.push_back(std::move(transfer));
    staged_.clear();
    return absl::OkStatus();
  }

  int completion_fd() const override { return event_.get(); }

  bool HasCompletions() const override { return done_count_.load(std::memory_order_acquire) > 0; }

  size_t Reap(std::vector<IoCompletion>* out) override {
    absl::MutexLock lock(&mutex_);
    const size_t reaped = done_.size();
    out->insert(out->end(), done_.begin(), done_.end());
    done_.clear();
    done_count_.store(0, std::memory_order_release);
    in_flight_ -= static_cast<uint32_t>(reaped);
    return reaped;
  }

  bool ReadsCachedDataInline() const override { return false; }  // the workers do every transfer
  uint32_t in_flight() const override { return in_flight_; }
  uint32_t depth() const override { return depth_; }
  std::string_view name() const override { return "threads"; }

 private:
  // Something a worker may start: the queue's head, unless a flush is running, or the head is a
  // flush and something before it still runs.
  bool Startable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (queue_.empty() || barrier_running_) return false;
    return queue_.front().request.operation != IoOperation::kFlush || running_ == 0;
  }

  void Work() {
    while (true) {
      IoTransfer transfer;
      {
        absl::MutexLock lock(&mutex_);
        mutex_.Await(absl::Condition(
            +[](ThreadPoolEngine* engine) ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine->mutex_) {
              return engine->stopping_ || engine->Startable();
            },
            this));
        if (stopping_) return;
        transfer = std::move(queue_.front());
        queue_.pop_front();
        ++running_;
        if (transfer.request.operation == IoOperation::kFlush) barrier_running_ = true;
      }
      const int error = Perform(fd_, transfer);
      {
        absl::MutexLock lock(&mutex_);
        --running_;
        if (transfer.request.operation == IoOperation::kFlush) barrier_running_ = false;
        done_.push_back({transfer.request.tag, error});
        done_count_.store(done_.size(), std::memory_order_release);
      }
      const uint64_t one = 1;
      (void)!write(event_.get(), &one, sizeof(one));
    }
  }

  const int fd_;
  const uint32_t depth_;
  const base::Fd event_;
  // The owner's.
  std::vector<IoTransfer> staged_;
  uint32_t in_flight_ = 0;

  absl::Mutex mutex_;
  std::deque<IoTransfer> queue_ ABSL_GUARDED_BY(mutex_);
  std::vector<IoCompletion> done_ ABSL_GUARDED_BY(mutex_);
  std::atomic<size_t> done_count_{0};  // done_.size(), for HasCompletions without the lock
  uint32_t running_ ABSL_GUARDED_BY(mutex_) = 0;
  bool barrier_running_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<IoEngine>> NewThreadPoolEngine(int fd, uint32_t depth, uint32_t threads) {
  if (depth == 0 || threads == 0) return absl::InvalidArgumentError("I/O threads: a depth or thread count of 0");
  base::Fd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event.valid()) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  auto engine = std::make_unique<ThreadPoolEngine>(fd, depth, std::move(event));
  engine->StartWorkers(threads);
  return std::unique_ptr<IoEngine>(std::move(engine));
}

}  // namespace xenkvm::block
