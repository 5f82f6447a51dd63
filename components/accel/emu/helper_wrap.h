// A link-time wrap (`ld --wrap=NAME`) of one of Unicorn's TCG helpers that calls `prologue` first
// and then jumps to the helper itself: the helper's return address stays the translated code's,
// so a fault raised inside it still restores the guest instruction's RIP (and flags) from the
// translation, as without the wrap. `prologue` is an extern "C" function of no arguments or of
// the helper's first (env). The helper's arguments (at most three: env and two more) are kept.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_HELPER_WRAP_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_HELPER_WRAP_H_

// The stack is 16-byte aligned at the call (entry rsp = 8 mod 16, three pushes).
#define XENKVM_WRAP_HELPER_WITH_PROLOGUE(name, prologue) \
  asm(".text\n"                                          \
      ".globl __wrap_" #name "\n"                        \
      ".type __wrap_" #name ", @function\n"              \
      "__wrap_" #name ":\n"                              \
      "  push %rdi\n"                                    \
      "  push %rsi\n"                                    \
      "  push %rdx\n"                                    \
      "  call " #prologue "\n"                           \
      "  pop %rdx\n"                                     \
      "  pop %rsi\n"                                     \
      "  pop %rdi\n"                                     \
      "  jmp __real_" #name "\n"                         \
      ".size __wrap_" #name ", . - __wrap_" #name "\n");

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_HELPER_WRAP_H_
