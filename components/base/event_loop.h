// EventLoop: one thread's epoll dispatcher. Devices, PV backends and the control server live on an
// event loop; other threads hand work to it with Post() instead of sharing locks (see DESIGN.md,
// "Runtime").
#ifndef XENKVM_COMPONENTS_BASE_EVENT_LOOP_H_
#define XENKVM_COMPONENTS_BASE_EVENT_LOOP_H_

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "components/base/event_fd.h"
#include "components/base/fd.h"

namespace xenkvm::base {

// Thread-safety: every method may be called from any thread, including from inside a handler or a
// posted closure. Handlers and closures always run on the loop thread, one at a time.
//
// Stopping: Stop() makes Run() return as soon as the handler or closure that is running (if any)
// returns; events and closures not yet dispatched are dropped, and a stopped loop stays stopped
// (Post() then fails). The destructor stops the loop and joins the thread that Start() made.
class EventLoop {
 public:
  // Called on the loop thread with the epoll events that fired (EPOLLIN, EPOLLOUT, EPOLLHUP...).
  using Handler = std::function<void(uint32_t events)>;

  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();

  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Watches `fd` (owned by the caller, who must Unregister it before closing it) for `events`.
  // kAlreadyExists if `fd` is registered already.
  absl::Status Register(int fd, uint32_t events, Handler handler);
  // Changes the events watched for a registered fd; kNotFound if it is not registered.
  absl::Status Modify(int fd, uint32_t events);
  // Stops watching `fd`. After it returns the handler is never called again for events that were
  // collected but not yet dispatched (a handler already running on the loop thread finishes).
  absl::Status Unregister(int fd);

  // Runs `closure` on the loop thread, in posting order. kFailedPrecondition once the loop stopped.
  absl::Status Post(std::function<void()> closure);

  // Dispatches on the calling thread until Stop(). kFailedPrecondition if the loop is already
  // running or has stopped.
  absl::Status Run();
  // Runs the loop on a thread of its own.
  absl::Status Start();
  void Stop();
  // Waits for the thread that Start() made; no-op without one. Not from the loop thread itself.
  void Join();

  bool IsLoopThread() const { return loop_thread_id_.load() == std::this_thread::get_id(); }
  bool stopped() const { return stop_requested_.load(); }

 private:
  struct Watch {
    uint64_t token;
    Handler handler;
  };

  EventLoop(Fd epoll, EventFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  void RunPosted();

  static constexpr uint64_t kWakeToken = 0;

  Fd epoll_;
  EventFd wake_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> running_{false};
  std::atomic<std::thread::id> loop_thread_id_{};
  std::thread thread_;

  absl::Mutex mutex_;
  uint64_t next_token_ ABSL_GUARDED_BY(mutex_) = kWakeToken + 1;
  absl::flat_hash_map<int, uint64_t> token_by_fd_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Watch>> watches_ ABSL_GUARDED_BY(mutex_);
  std::vector<std::function<void()>> posted_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_EVENT_LOOP_H_
