#include "components/xen/timers.h"

#include <algorithm>

#include "spdlog/spdlog.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kNsPerMs = 1'000'000;
constexpr uint64_t kOwedUpcallRetryNs = kNsPerMs;

}  // namespace

Timers::Timers(const SystemClock& clock, uint32_t vcpus, std::function<void(uint32_t)> fire,
               std::function<bool()> retry_owed)
    : clock_(clock), fire_(std::move(fire)), retry_owed_(std::move(retry_owed)), vcpus_(vcpus) {}

Timers::~Timers() { Join(); }

void Timers::Start() { thread_ = std::thread([this] { Loop(); }); }

void Timers::Stop() {
  absl::MutexLock lock(&mutex_);
  stopping_ = true;
}

void Timers::Join() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void Timers::SetSingleshot(uint32_t vcpu, std::optional<uint64_t> deadline_ns) {
  absl::MutexLock lock(&mutex_);
  if (vcpu >= vcpus_.size()) return;
  spdlog::trace("Xen shim: vCPU {} singleshot timer at {} ns (now {} ns)", vcpu, deadline_ns.value_or(0), clock_.NowNs());
  vcpus_[vcpu].singleshot_ns = deadline_ns;
  changed_ = true;
}

void Timers::SetTimerOp(uint32_t vcpu, uint64_t timeout_ns) {
  if (timeout_ns == 0) return SetSingleshot(vcpu, std::nullopt);
  if (static_cast<int64_t>(timeout_ns) < 0 || timeout_ns >= (uint64_t{1} << 50)) {
    return SetSingleshot(vcpu, clock_.NowNs() + 100 * kNsPerMs);
  }
  SetSingleshot(vcpu, timeout_ns);
}

void Timers::SetPeriodic(uint32_t vcpu, uint64_t period_ns) {
  absl::MutexLock lock(&mutex_);
  if (vcpu >= vcpus_.size()) return;
  vcpus_[vcpu].periodic_ns = period_ns;
  vcpus_[vcpu].periodic_next_ns = period_ns == 0 ? 0 : clock_.NowNs() + period_ns;
  changed_ = true;
}

void Timers::Wake() {
  absl::MutexLock lock(&mutex_);
  changed_ = true;
}

std::vector<uint32_t> Timers::TakeDueLocked(uint64_t now) {
  std::vector<uint32_t> due;
  for (uint32_t v = 0; v < vcpus_.size(); ++v) {
    VcpuTimers& timers = vcpus_[v];
    bool fire = false;
    if (timers.singleshot_ns && *timers.singleshot_ns <= now) {
      timers.singleshot_ns.reset();
      fire = true;
    }
    if (timers.periodic_ns && timers.periodic_next_ns <= now) {
      // Skip missed periods rather than firing a burst.
      timers.periodic_next_ns += ((now - timers.periodic_next_ns) / timers.periodic_ns + 1) * timers.periodic_ns;
      fire = true;
    }
    if (fire) due.push_back(v);
  }
  return due;
}

void Timers::Loop() {
  for (;;) {
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
      changed_ = false;  // before the retry: a Wake() during it is seen below
    }
    const bool owed = retry_owed_ && retry_owed_();
    std::vector<uint32_t> due;
    {
      absl::MutexLock lock(&mutex_);
      const uint64_t now = clock_.NowNs();
      std::optional<uint64_t> next;
      if (owed) next = now + kOwedUpcallRetryNs;
      for (const VcpuTimers& timers : vcpus_) {
        if (timers.singleshot_ns) next = std::min(next.value_or(~uint64_t{0}), *timers.singleshot_ns);
        if (timers.periodic_ns) next = std::min(next.value_or(~uint64_t{0}), timers.periodic_next_ns);
      }
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return changed_ || stopping_; };
      if (!next) {
        mutex_.Await(absl::Condition(&wake));
        continue;
      }
      if (*next > now) {
        mutex_.AwaitWithTimeout(absl::Condition(&wake), absl::Nanoseconds(*next - now));
        continue;
      }
      due = TakeDueLocked(now);
    }
    for (uint32_t v : due) {
      spdlog::trace("Xen shim: vCPU {} timer fires", v);
      fire_(v);
    }
  }
}

}  // namespace xenkvm::xen
