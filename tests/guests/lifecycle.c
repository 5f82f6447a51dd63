/* The lifecycle guest: ends the way its command line says, so that the VMM's handling of each
 * ending can be tested: "end=poweroff" (default), "end=fail", "end=halt" (CLI; HLT),
 * "end=reset" (i8042 reset), "end=crash" (an exception the VM cannot handle: INT n with an empty IDT, a triple fault). */
#include "kit/kit.h"

static bool has_word(const char *cmdline, const char *word) {
  size_t n = kit_strlen(word);
  for (const char *p = cmdline; *p; p++) {
    if ((p == cmdline || p[-1] == ' ') && kit_memcmp(p, word, n) == 0 && (p[n] == ' ' || p[n] == '\0')) {
      return true;
    }
  }
  return false;
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  kit_printf("lifecycle guest: \"%s\"\n", cmdline);
  if (has_word(cmdline, "end=fail")) return 7;
  if (has_word(cmdline, "end=halt")) {
    for (;;) __asm__ volatile("cli; hlt");
  }
  if (has_word(cmdline, "end=reset")) {
    kit_outb(0x64, 0xfe);
    for (;;) __asm__ volatile("pause");
  }
  if (has_word(cmdline, "end=crash")) {
    static const struct { uint16_t limit; uint64_t base; } __attribute__((packed)) no_idt = {0, 0};
    __asm__ volatile("lidt %0; int $0x40" ::"m"(no_idt));
  }
  return 0;
}
