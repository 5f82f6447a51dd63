// Unicorn 2.1's CMPXCHG8B and CMPXCHG16B helpers (mem_helper.c) start from
// cpu_cc_compute_all(env, env->cc_op), but the translator does not store its lazily tracked cc_op
// into env before calling them (every other flag-reading helper gets a gen_update_cc_op first).
// When an earlier instruction in the same translation block set the flags, env->cc_op still names
// the previous block's operation while cc_src/cc_dst hold the new operands. If that stale
// operation is one that passes cc_src through as flags (CC_OP_EFLAGS after a POPF or IRET,
// ADCX/ADOX/ADCOX), a data value becomes RFLAGS: TF, NT, AC and reserved bits appear after the
// instruction, and the next PUSHF/POPF pair or interrupt frame makes them real (Debian 13's kernel
// took a #DB in SLUB's this_cpu_cmpxchg128 under load).
//
// The link wraps the four helpers (`ld --wrap`, the cmpxchg_flags target). Each wrap repairs
// env->cc_op when it provably cannot be current -- a pass-through operation whose cc_src holds
// bits no flags computation produces -- and then jumps to Unicorn's helper, so the helper's
// return address is still the translated code's: a fault inside it restores the instruction's
// RIP and its true cc_op from the translation as before. After a repair the flags other than ZF
// are computed from the last result (as a logical operation would leave them) instead of being
// left alone; software reads only ZF after these instructions.
#include <cstdint>

#include "components/accel/emu/helper_wrap.h"

namespace {

// The head of Unicorn's CPUX86State (qemu/target/i386/cpu.h, x86_64 target).
struct CpuStateHead {
  uint64_t regs[16];
  uint64_t eip;
  uint64_t eflags;
  uint64_t cc_dst;
  uint64_t cc_src;
  uint64_t cc_src2;
  uint32_t cc_op;
};
static_assert(__builtin_offsetof(CpuStateHead, cc_op) == 168);

// Unicorn 2.1's enum CCOp.
constexpr uint32_t kCcOpEflags = 1;
constexpr uint32_t kCcOpLogicQ = 25;
constexpr uint32_t kCcOpAdcx = 46;
constexpr uint32_t kCcOpAdcox = 48;
// CF PF AF ZF SF OF: all a flags computation ever stores in cc_src under these operations.
constexpr uint64_t kArithmeticFlags = 0x8d5;

bool PassesCcSrcThrough(uint32_t cc_op) {
  return cc_op == kCcOpEflags || (cc_op >= kCcOpAdcx && cc_op <= kCcOpAdcox);
}

}  // namespace

extern "C" void xenkvm_emu_repair_stale_cc_op(void* env) {
  auto* state = static_cast<CpuStateHead*>(env);
  if (PassesCcSrcThrough(state->cc_op) && (state->cc_src & ~kArithmeticFlags) != 0) {
    state->cc_op = kCcOpLogicQ;
  }
}

XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_cmpxchg8b_x86_64, xenkvm_emu_repair_stale_cc_op)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_cmpxchg8b_unlocked_x86_64, xenkvm_emu_repair_stale_cc_op)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_cmpxchg16b_x86_64, xenkvm_emu_repair_stale_cc_op)
XENKVM_WRAP_HELPER_WITH_PROLOGUE(helper_cmpxchg16b_unlocked_x86_64, xenkvm_emu_repair_stale_cc_op)
