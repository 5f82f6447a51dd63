/* The cpuid guest: prints the hypervisor CPUID leaves (0x40000000 and the four after it), as a Xen
 * guest's detection code reads them. */
#include "kit/kit.h"

static void print_signature(const char *what, const uint32_t regs[4]) {
  char signature[13];
  memcpy(signature, &regs[1], 4);
  memcpy(signature + 4, &regs[2], 4);
  memcpy(signature + 8, &regs[3], 4);
  signature[12] = '\0';
  for (int i = 0; i < 12; i++) {
    if (signature[i] < 0x20 || signature[i] > 0x7e) signature[i] = '.';
  }
  kit_printf("%s \"%s\"\n", what, signature);
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  uint32_t regs[4];
  kit_cpuid(1, 0, regs);
  kit_printf("cpuid 1: hypervisor bit %u\n", (regs[2] >> 31) & 1);
  KIT_CHECK((regs[2] >> 31) & 1);
  kit_cpuid(0x40000000, 0, regs);
  print_signature("cpuid 0x40000000: max leaf", regs);
  kit_printf("cpuid 0x40000000: eax=%08x\n", regs[0]);
  for (uint32_t leaf = 0x40000001; leaf <= 0x40000004; leaf++) {
    kit_cpuid(leaf, 0, regs);
    kit_printf("cpuid %x: eax=%08x ebx=%08x ecx=%08x edx=%08x\n", leaf, regs[0], regs[1], regs[2], regs[3]);
  }
  return 0;
}
