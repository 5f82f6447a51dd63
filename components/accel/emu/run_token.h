// The right to run guest code, one vCPU of a VM at a time, handed over in arrival order.
//
// Unicorn generates plain loads and stores for LOCK-prefixed instructions and XCHG (its TBs never
// carry CF_PARALLEL): two engines running at once on shared guest memory break the guest's
// atomics (Linux's spinlocks lost updates, and both CPUs waited for a lock nobody held). So the
// vCPUs of an emu VM take turns, as QEMU's single-threaded TCG does: a vCPU holds the token while
// its engine runs and gives it up at each exit (port I/O, MMIO, hypercall), at HLT, and when
// another vCPU has waited for a time slice.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_RUN_TOKEN_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_RUN_TOKEN_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace xenkvm::accel::emu {

class RunToken {
 public:
  // Waits for the token; holders come in the order they asked. `urgent`: the holder stops at its
  // next block rather than at the end of its slice (a host thread that must write guest memory);
  // `stop_holder`, called once this caller is in the queue, makes it stop there.
  void Acquire(bool urgent = false, absl::FunctionRef<void()> stop_holder = [] {}) {
    if (urgent) urgent_.fetch_add(1, std::memory_order_relaxed);
    waiters_.fetch_add(1, std::memory_order_relaxed);
    absl::MutexLock lock(&mutex_);
    const uint64_t ticket = next_ticket_++;
    auto my_turn = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return serving_ == ticket; };
    if (!my_turn()) {
      mutex_.Unlock();  // the holder's stop must not wait for this lock (Release takes it)
      stop_holder();
      mutex_.Lock();
    }
    mutex_.Await(absl::Condition(&my_turn));
    waiters_.fetch_sub(1, std::memory_order_relaxed);
    if (urgent) urgent_.fetch_sub(1, std::memory_order_relaxed);
  }
  void Release() {
    absl::MutexLock lock(&mutex_);
    ++serving_;
  }
  // Someone waits for the token (cheap: the holder asks between blocks).
  bool contended() const { return waiters_.load(std::memory_order_relaxed) > 0; }
  bool urgently_wanted() const { return urgent_.load(std::memory_order_relaxed) > 0; }

 private:
  absl::Mutex mutex_;
  uint64_t next_ticket_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t serving_ ABSL_GUARDED_BY(mutex_) = 0;
  std::atomic<int> waiters_{0};
  std::atomic<int> urgent_{0};
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_RUN_TOKEN_H_
