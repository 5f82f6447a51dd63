#include "components/accel/emu/instruction_intercept.h"

#include <utility>

#include "components/accel/emu/helper_wrap.h"

namespace xenkvm::accel::emu {
namespace {

thread_local InstructionHandler* current_handler = nullptr;

// Unicorn's CPUX86State (qemu/target/i386/cpu.h) opens with the 16 general registers of the
// x86_64 target, in the architecture's order; RDMSR and WRMSR use EAX, ECX and EDX.
struct CpuStateHead {
  uint64_t regs[16];
};
constexpr int kRax = 0;
constexpr int kRcx = 1;
constexpr int kRdx = 2;

}  // namespace

InstructionHandler* ExchangeInstructionHandler(InstructionHandler* handler) {
  return std::exchange(current_handler, handler);
}

ScopedInstructionHandler::ScopedInstructionHandler(InstructionHandler* handler) : previous_(current_handler) {
  current_handler = handler;
}

ScopedInstructionHandler::~ScopedInstructionHandler() { current_handler = previous_; }

}  // namespace xenkvm::accel::emu

// Unicorn's helpers (libunicorn.a's misc_helper.c and seg_helper.c, x86_64 target). Without the link's --wrap the
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

extern "C" void __real_helper_cpuid_x86_64(void* env);
extern "C" void __real_helper_syscall_x86_64(void* env, int next_eip_addend);
extern "C" void __real_helper_sysenter_x86_64(void* env, int next_eip_addend);

extern "C" void __wrap_helper_cpuid_x86_64(void* env) {
  using namespace xenkvm::accel::emu;
  if (current_handler != nullptr && current_handler->OnCpuid()) return;
  __real_helper_cpuid_x86_64(env);
}

extern "C" void __wrap_helper_syscall_x86_64(void* env, int next_eip_addend) {
  using namespace xenkvm::accel::emu;
  if (current_handler != nullptr) current_handler->OnSyscall();
  __real_helper_syscall_x86_64(env, next_eip_addend);
}

extern "C" void __wrap_helper_sysenter_x86_64(void* env, int next_eip_addend) {
  using namespace xenkvm::accel::emu;
  if (current_handler != nullptr) current_handler->OnSysenter();
  __real_helper_sysenter_x86_64(env, next_eip_addend);
}

// The instructions that can set RFLAGS.IF, HLT, MWAIT and PAUSE. The handler hears of each before
// Unicorn's helper runs; the wrap then jumps to the helper, so the helper's return address is
// still the translated code's and a fault inside it (IRET's and SYSRET's) restores the
// instruction's RIP from the translation, as without the wrap.
extern "C" void xenkvm_emu_before_interrupt_flag_write() {
  if (xenkvm::accel::emu::current_handler != nullptr) {
    xenkvm::accel::emu::current_handler->BeforeInterruptFlagWrite();
  }
}

extern "C" void xenkvm_emu_before_halt() {
  if (xenkvm::accel::emu::current_handler != nullptr) xenkvm::accel::emu::current_handler->BeforeHalt();
}

extern "C" void xenkvm_emu_before_pause() {
  if (xenkvm::accel::emu::current_handler != nullptr) xenkvm::accel::emu::current_handler->BeforePause();
}

XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_sti_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_write_eflags_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_iret_real_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_iret_protected_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_sysret_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_sysexit_x86_64, xenkvm_emu_before_interrupt_flag_write)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_hlt_x86_64, xenkvm_emu_before_halt)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_mwait_x86_64, xenkvm_emu_before_halt)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_pause_x86_64, xenkvm_emu_before_pause)
