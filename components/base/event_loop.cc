#include "components/base/event_loop.h"

#include <sys/epoll.h>

#include "absl/strings/str_cat.h"
#include "components/base/status.h"

namespace xenkvm::base {

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  int epoll = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll < 0) return ErrnoStatus("epoll_create1");
  Fd epoll_fd(epoll);
  XENKVM_ASSIGN_OR_RETURN(EventFd wake, EventFd::Create());
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = kWakeToken;
  if (::epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, wake.fd(), &event) < 0) {
    return ErrnoStatus("epoll_ctl(EPOLL_CTL_ADD, wake eventfd)");
  }
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(epoll_fd), std::move(wake)));
}

EventLoop::~EventLoop() {
  Stop();
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();  // destroyed from its own handler: the thread ends right after.
    } else {
      thread_.join();
    }
  }
}

absl::Status EventLoop::Register(int fd, uint32_t events, Handler handler) {
  if (fd < 0) return absl::InvalidArgumentError("EventLoop::Register: negative fd");
  if (!handler) return absl::InvalidArgumentError("EventLoop::Register: empty handler");
  absl::MutexLock lock(&mutex_);
  if (token_by_fd_.contains(fd)) {
    return absl::AlreadyExistsError(absl::StrCat("EventLoop::Register: fd ", fd, " is registered already"));
  }
  uint64_t token = next_token_++;
  epoll_event event{};
  event.events = events;
  event.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) < 0) {
    return ErrnoStatus(absl::StrCat("epoll_ctl(EPOLL_CTL_ADD, fd ", fd, ")"));
  }
  token_by_fd_[fd] = token;
  watches_[token] = std::make_shared<Watch>(Watch{token, std::move(handler)});
  return absl::OkStatus();
}

absl::Status EventLoop::Modify(int fd, uint32_t events) {
  absl::MutexLock lock(&mutex_);
  auto it = token_by_fd_.find(fd);
  if (it == token_by_fd_.end()) {
    return absl::NotFoundError(absl::StrCat("EventLoop::Modify: fd ", fd, " is not registered"));
  }
  epoll_event event{};
  event.events = events;
  event.data.u64 = it->second;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &event) < 0) {
    return ErrnoStatus(absl::StrCat("epoll_ctl(EPOLL_CTL_MOD, fd ", fd, ")"));
  }
  return absl::OkStatus();
}

absl::Status EventLoop::Unregister(int fd) {
  std::shared_ptr<Watch> dropped;  // destroyed outside the lock: the handler may own anything.
  absl::MutexLock lock(&mutex_);
  auto it = token_by_fd_.find(fd);
  if (it == token_by_fd_.end()) {
    return absl::NotFoundError(absl::StrCat("EventLoop::Unregister: fd ", fd, " is not registered"));
  }
  auto watch = watches_.find(it->second);
  dropped = std::move(watch->second);
  watches_.erase(watch);
  token_by_fd_.erase(it);
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr) < 0) {
    return ErrnoStatus(absl::StrCat("epoll_ctl(EPOLL_CTL_DEL, fd ", fd, ")"));
  }
  return absl::OkStatus();
}

absl::Status EventLoop::Post(std::function<void()> closure) {
  if (!closure) return absl::InvalidArgumentError("EventLoop::Post: empty closure");
  {
    absl::MutexLock lock(&mutex_);
    if (stop_requested_.load()) {
      return absl::FailedPreconditionError("EventLoop::Post: the event loop has stopped");
    }
    posted_.push_back(std::move(closure));
  }
  return wake_.Write(1);
}

void EventLoop::RunPosted() {
  std::vector<std::function<void()>> batch;
  {
    absl::MutexLock lock(&mutex_);
    batch.swap(posted_);
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (stop_requested_.load()) return;
    batch[i]();
  }
}

absl::Status EventLoop::Run() {
  if (stop_requested_.load()) {
    return absl::FailedPreconditionError("EventLoop::Run: the event loop has stopped");
  }
  if (running_.exchange(true)) {
    return absl::FailedPreconditionError("EventLoop::Run: the event loop is running already");
  }
  loop_thread_id_.store(std::this_thread::get_id());
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  absl::Status result = absl::OkStatus();
  while (!stop_requested_.load()) {
    int count = ::epoll_wait(epoll_.get(), events, kMaxEvents, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      result = ErrnoStatus("epoll_wait");
      break;
    }
    for (int i = 0; i < count && !stop_requested_.load(); ++i) {
      uint64_t token = events[i].data.u64;
      if (token == kWakeToken) {
        (void)wake_.Read();  // kUnavailable just means another wake-up drained it first.
        RunPosted();
        continue;
      }
      std::shared_ptr<Watch> watch;
      {
        absl::MutexLock lock(&mutex_);
        auto it = watches_.find(token);
        if (it == watches_.end()) continue;  // unregistered after epoll_wait collected it
        watch = it->second;
      }
      watch->handler(events[i].events);
    }
  }
  loop_thread_id_.store(std::thread::id());
  running_.store(false);
  return result;
}

absl::Status EventLoop::Start() {
  if (thread_.joinable() || running_.load()) {
    return absl::FailedPreconditionError("EventLoop::Start: the event loop is running already");
  }
  if (stop_requested_.load()) {
    return absl::FailedPreconditionError("EventLoop::Start: the event loop has stopped");
  }
  thread_ = std::thread([this] { (void)Run(); });
  return absl::OkStatus();
}

void EventLoop::Stop() {
  {
    // Under the lock so that a Post() racing with Stop() either lands before it or is refused.
    absl::MutexLock lock(&mutex_);
    stop_requested_.store(true);
  }
  (void)wake_.Write(1);
}

void EventLoop::Join() {
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

}  // namespace xenkvm::base
