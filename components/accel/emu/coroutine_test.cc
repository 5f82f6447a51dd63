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

// A coroutine that never ran leaves its stack as clean as it found it: the memory, once unmapped
// and mapped again, is plain memory. (Under AddressSanitizer a stale stack redzone there turns the
// memset below into a stack-buffer-overflow report; Boost unwinding an unstarted fiber on its own
// stack, unannotated, left such redzones.)
TEST(CoroutineTest, AnUnstartedCoroutineLeavesItsStackClean) {
  constexpr size_t kStackSize = size_t{3} << 20;  // a size of its own, so its hole is reused below
  bool ran = false;
  { Coroutine coroutine([&] { ran = true; }, kStackSize); }
  EXPECT_FALSE(ran);
  const size_t size = kStackSize + static_cast<size_t>(getpagesize());
  void* again = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(again, MAP_FAILED);
  std::memset(again, 1, size);
  munmap(again, size);
}

}  // namespace
}  // namespace xenkvm::accel::emu
