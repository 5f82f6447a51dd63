#include "components/accel/emu/coroutine.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <utility>

#include <boost/context/preallocated.hpp>
#include <boost/context/stack_context.hpp>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace xenkvm::accel::emu {
namespace {

// Boost.Context's stack allocator interface over the stack the Coroutine owns.
struct OwnStack {
  boost::context::stack_context allocate() { return context; }
  void deallocate(boost::context::stack_context&) {}  // the Coroutine unmaps it
  boost::context::stack_context context;
};

}  // namespace

Coroutine::Coroutine(std::function<void()> body, size_t stack_size) : body_(std::move(body)) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  stack_size_ = (stack_size + page - 1) / page * page;
  mapping_size_ = stack_size_ + page;
  mapping_ = mmap(nullptr, mapping_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                  -1, 0);
  if (mapping_ == MAP_FAILED) std::abort();  // no address space for a stack: nothing sensible is left to do
  mprotect(mapping_, page, PROT_NONE);        // the stack grows down onto it
  stack_ = static_cast<uint8_t*>(mapping_) + page;
  OwnStack allocator;
  allocator.context.size = stack_size_;
  allocator.context.sp = static_cast<uint8_t*>(stack_) + stack_size_;  // the top: stacks grow down
  own_ = boost::context::fiber(std::allocator_arg, allocator, [this](boost::context::fiber&& caller) {
    caller_ = std::move(caller);
    AfterSwitch(/*in_body=*/true);
    if (!cancelled_) body_();
    finished_ = true;
    BeforeSwitch(/*from_body=*/true, caller_bottom_, caller_size_, /*leaving_for_good=*/true);
    return std::move(caller_);
  });
}

Coroutine::~Coroutine() {
  if (started_ && !finished_) std::abort();  // its stack's objects would be lost: a bug in the owner
  if (!started_) {
    // Entered once to return at once, through Resume()'s switch that AddressSanitizer is told
    // of. Dropping the unstarted fiber instead makes Boost throw its unwinding exception on this
    // stack unannounced.
    cancelled_ = true;
    Resume();
  }
  ForgetStack();
  munmap(mapping_, mapping_size_);
}

void Coroutine::ForgetStack() {
#if defined(__SANITIZE_ADDRESS__)
  // Boost's entry frame never returns (the fiber leaves it by a jump), so its redzones stay
  // poisoned; memory mapped at this address later would report stack overflows.
  __asan_unpoison_memory_region(stack_, stack_size_);
#endif
}

void Coroutine::BeforeSwitch(bool from_body, const void* to_bottom, size_t to_size, bool leaving_for_good) {
#if defined(__SANITIZE_ADDRESS__)
  void** saved = from_body ? &body_fake_stack_ : &caller_fake_stack_;
  __sanitizer_start_switch_fiber(leaving_for_good ? nullptr : saved, to_bottom, to_size);
#else
  (void)from_body;
  (void)to_bottom;
  (void)to_size;
  (void)leaving_for_good;
#endif
}

void Coroutine::AfterSwitch(bool in_body) {
#if defined(__SANITIZE_ADDRESS__)
  // Back in the body (from a Resume, perhaps on another thread): that caller's stack is the one
  // to return to. Back in Resume(): the body's stack is known already.
  __sanitizer_finish_switch_fiber(in_body ? body_fake_stack_ : caller_fake_stack_, in_body ? &caller_bottom_ : nullptr,
                                  in_body ? &caller_size_ : nullptr);
#else
  (void)in_body;
#endif
}

void Coroutine::Resume() {
  if (finished_) return;
  started_ = true;
  BeforeSwitch(/*from_body=*/false, stack_, stack_size_, /*leaving_for_good=*/false);
  own_ = std::move(own_).resume();  // the body's continuation when it yields; empty once it returns
  AfterSwitch(/*in_body=*/false);
}

void Coroutine::Yield() {
  BeforeSwitch(/*from_body=*/true, caller_bottom_, caller_size_, /*leaving_for_good=*/false);
  caller_ = std::move(caller_).resume();
  AfterSwitch(/*in_body=*/true);
}

}  // namespace xenkvm::accel::emu
