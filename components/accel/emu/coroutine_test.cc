#include "components/accel/emu/coroutine.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace xenkvm::accel::emu {
namespace {

// The body and its callers take turns, the body's locals surviving each switch, and it may be
// resumed from another thread than the one that entered it.
TEST(CoroutineTest, TakesTurnsWithItsCallersOnAnyThread) {
  std::vector<std::string> steps;
  Coroutine* self = nullptr;
  Coroutine coroutine([&] {
    std::string local = "body";
    for (int i = 0; i < 3; ++i) {
      steps.push_back(local + std::to_string(i));
      self->Yield();
    }
  });
  self = &coroutine;
  EXPECT_FALSE(coroutine.started());
  coroutine.Resume();
  steps.push_back("caller");
  std::thread([&] {
    coroutine.Resume();
    steps.push_back("other thread");
  }).join();
  coroutine.Resume();
  EXPECT_FALSE(coroutine.finished());
  coroutine.Resume();
  EXPECT_TRUE(coroutine.finished());
  coroutine.Resume();  // nothing left to run
  EXPECT_EQ(steps, (std::vector<std::string>{"body0", "caller", "body1", "other thread", "body2"}));
}

// Deep enough recursion for a code generator's stack, on the reserved stack.
int Recurse(int depth) {
  volatile char frame[1024];
  frame[0] = static_cast<char>(depth);
  return depth == 0 ? frame[0] : Recurse(depth - 1) + 1;
}

TEST(CoroutineTest, TheStackHoldsDeepCalls) {
  int result = 0;
  Coroutine coroutine([&] { result = Recurse(2000); });
  coroutine.Resume();
  EXPECT_TRUE(coroutine.finished());
  EXPECT_EQ(result, 2000);
}

// Maps `size` bytes and writes them all: under AddressSanitizer, a stale stack redzone left in
// that range by memory unmapped before turns the memset into a stack-buffer-overflow report.
void MapAndWriteWhole(size_t size) {
  void* again = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(again, MAP_FAILED);
  std::memset(again, 1, size);
  munmap(again, size);
}

// A coroutine leaves its stack as clean as it found it, whether it finished or never started:
// the memory, unmapped and mapped again (the stack's size is the test's own, so the kernel hands
// the same hole back), is plain memory. Boost's entry frame never returns, and unwinding an
// unstarted fiber ran on its stack unannounced: both left redzones behind.
TEST(CoroutineTest, ItsStackIsLeftClean) {
  constexpr size_t kStackSize = size_t{3} << 20;
  const size_t mapped = kStackSize + static_cast<size_t>(getpagesize());  // with its guard page
  bool ran = false;
  { Coroutine unstarted([&] { ran = true; }, kStackSize); }
  EXPECT_FALSE(ran);
  MapAndWriteWhole(mapped);
  {
    Coroutine finished([&] { ran = Recurse(100) == 100; }, kStackSize);
    finished.Resume();
    EXPECT_TRUE(finished.finished());
  }
  EXPECT_TRUE(ran);
  MapAndWriteWhole(mapped);
}

}  // namespace
}  // namespace xenkvm::accel::emu
