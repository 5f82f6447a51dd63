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
#include <chrono>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "components/base/spin_wait.h"

namespace xenkvm::accel::emu {

class RunToken {
 public:
  // How long a waiter polls for its turn before it sleeps. A turn often comes within
  // microseconds (the holder's exit, HLT or spin-wait), sooner than a sleeping thread wakes:
  // with two vCPUs, sleeping at once made 9,500 context switches a second of Linux's boot and
  // most of its time.
  static constexpr std::chrono::microseconds kPollTime{50};

  // Waits for the token; holders come in the order they asked. `urgent`: the holder stops at its
  // next block rather than at the end of its slice (a host thread that must write guest memory);
  // `stop_holder`, called once this caller is in the queue, makes it stop there.
  void Acquire(bool urgent = false, absl::FunctionRef<void()> stop_holder = [] {}) {
    if (urgent) urgent_.fetch_add(1, std::memory_order_relaxed);
    waiters_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t ticket = next_ticket_.fetch_add(1, std::memory_order_relaxed);
    if (!MyTurn(ticket)) {
      stop_holder();
      if (!base::SpinFor(kPollTime, [&] { return MyTurn(ticket); })) {
        absl::MutexLock lock(&mutex_);
        // Release looks at sleepers_ after it moves serving_ on, this looks at serving_ after
        // counting itself (both sequentially consistent): one of the two sees the other.
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        auto my_turn = [this, ticket] { return MyTurn(ticket); };
        mutex_.Await(absl::Condition(&my_turn));
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    waiters_.fetch_sub(1, std::memory_order_relaxed);
    if (urgent) urgent_.fetch_sub(1, std::memory_order_relaxed);
  }
  void Release() {
    serving_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      absl::MutexLock lock(&mutex_);  // letting it go looks at the sleepers' conditions again
    }
  }
  // Someone waits for the token (cheap: the holder asks between blocks).
  bool contended() const { return waiters_.load(std::memory_order_relaxed) > 0; }
  bool urgently_wanted() const { return urgent_.load(std::memory_order_relaxed) > 0; }

 private:
  bool MyTurn(uint64_t ticket) const { return serving_.load(std::memory_order_seq_cst) == ticket; }

  absl::Mutex mutex_;  // only for sleeping
  std::atomic<uint64_t> next_ticket_{0};
  std::atomic<uint64_t> serving_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> waiters_{0};
  std::atomic<int> urgent_{0};
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_RUN_TOKEN_H_
