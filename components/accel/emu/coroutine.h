// A function run on a stack of its own, entered and left on the calling thread: an emu vCPU's
// guest code runs in one, so that handing an exit to Run()'s caller and taking its answer back is
// a stack switch on one thread (Boost.Context's fiber: registers only, no system call), not a
// wake-up of another thread. AddressSanitizer is told of each switch (its fiber interface), so
// its stack checks follow.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_COROUTINE_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_COROUTINE_H_

#include <cstddef>
#include <functional>

#include <boost/context/fiber.hpp>

namespace xenkvm::accel::emu {

class Coroutine {
 public:
  // `body` runs on the first Resume(). The stack is reserved, not committed: only what the body
  // touches takes memory. A guard page below it faults instead of overrunning.
  explicit Coroutine(std::function<void()> body, size_t stack_size = size_t{8} << 20);
  // The body must have finished, or never started (then it never runs).
  ~Coroutine();
  Coroutine(const Coroutine&) = delete;
  Coroutine& operator=(const Coroutine&) = delete;

  // From outside the body: runs it until it yields or returns. Any thread, one at a time.
  void Resume();
  // From inside the body: back to the Resume() that entered it, until the next one.
  void Yield();
  bool started() const { return started_; }
  bool finished() const { return finished_; }

 private:
  // AddressSanitizer's view of a switch (nothing without it): before, the stack about to run;
  // after, in the body, the stack it came from (the caller's, to go back to).
  void BeforeSwitch(bool from_body, const void* to_bottom, size_t to_size, bool leaving_for_good);
  void AfterSwitch(bool in_body);
  // AddressSanitizer's view of the stack cleared before it is unmapped (nothing without it).
  void ForgetStack();

  std::function<void()> body_;
  void* mapping_ = nullptr;  // the stack and its guard page
  size_t mapping_size_ = 0;
  void* stack_ = nullptr;
  size_t stack_size_ = 0;
  boost::context::fiber own_;     // the body, while it is suspended
  boost::context::fiber caller_;  // the Resume() to go back to, while the body runs
  const void* caller_bottom_ = nullptr;
  size_t caller_size_ = 0;
  // AddressSanitizer's fake stacks (stack-use-after-return) of each side, kept across a switch.
  void* caller_fake_stack_ = nullptr;
  void* body_fake_stack_ = nullptr;
  bool started_ = false, finished_ = false;
  bool cancelled_ = false;  // destroyed before it started: the body is skipped
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_COROUTINE_H_
