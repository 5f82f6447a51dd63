#include "components/accel/emu/msr_intercept.h"

namespace xenkvm::accel::emu {
namespace {

thread_local MsrHandler* current_handler = nullptr;

// Unicorn's CPUX86State (qemu/target/i386/cpu.h) opens with the 16 general registers of the
// x86_64 target, in the architecture's order; RDMSR and WRMSR use EAX, ECX and EDX.
struct CpuStateHead {
  uint64_t regs[16];
};
constexpr int kRax = 0;
constexpr int kRcx = 1;
constexpr int kRdx = 2;

}  // namespace

ScopedMsrHandler::ScopedMsrHandler(MsrHandler* handler) : previous_(current_handler) {
  current_handler = handler;
}

ScopedMsrHandler::~ScopedMsrHandler() { current_handler = previous_; }

}  // namespace xenkvm::accel::emu

// Unicorn's helpers (libunicorn.a's misc_helper.c, x86_64 target). Without the link's --wrap the
// __real_ symbols do not resolve, so a build that lost the wraps fails to link.
extern "C" void __real_helper_rdmsr_x86_64(void* env);
extern "C" void __real_helper_wrmsr_x86_64(void* env);

extern "C" void __wrap_helper_rdmsr_x86_64(void* env) {
  using namespace xenkvm::accel::emu;
  auto* state = static_cast<CpuStateHead*>(env);
  std::optional<uint64_t> value;
  if (current_handler != nullptr) value = current_handler->OnRdmsr(static_cast<uint32_t>(state->regs[kRcx]));
  if (!value) {
    __real_helper_rdmsr_x86_64(env);
    return;
  }
  state->regs[kRax] = static_cast<uint32_t>(*value);
  state->regs[kRdx] = *value >> 32;
}

extern "C" void __wrap_helper_wrmsr_x86_64(void* env) {
  using namespace xenkvm::accel::emu;
  auto* state = static_cast<CpuStateHead*>(env);
  uint64_t value = (state->regs[kRdx] << 32) | static_cast<uint32_t>(state->regs[kRax]);
  if (current_handler != nullptr && current_handler->OnWrmsr(static_cast<uint32_t>(state->regs[kRcx]), value)) {
    return;
  }
  __real_helper_wrmsr_x86_64(env);
}
