/* The hello guest: greets on the serial console and the debug port, shows what the loader told it,
 * and powers off. */
#include "kit/kit.h"

int guest_main(const struct hvm_start_info *start_info) {
  kit_printf("Hello from a xenkvm guest!\n");
  KIT_CHECK(start_info->magic == KIT_HVM_START_MAGIC);
  KIT_CHECK(start_info->version >= 1);
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  kit_printf("command line: \"%s\"\n", cmdline ? cmdline : "");
  const struct hvm_memmap_table_entry *map =
      (const struct hvm_memmap_table_entry *)(uintptr_t)start_info->memmap_paddr;
  uint64_t ram = 0;
  for (uint32_t i = 0; i < start_info->memmap_entries; i++) {
    if (map[i].type == 1) ram += map[i].size;
  }
  kit_printf("memory map: %u entries, %llu MiB of RAM\n", start_info->memmap_entries,
             (unsigned long long)(ram >> 20));
  KIT_CHECK(ram > 0);
  /* Boot modules (an initrd): each one's size and FNV-1a hash, for the host to compare. */
  const struct hvm_modlist_entry {
    uint64_t paddr, size, cmdline_paddr, reserved;
  } *modules = (const struct hvm_modlist_entry *)(uintptr_t)start_info->modlist_paddr;
  for (uint32_t i = 0; i < start_info->nr_modules; i++) {
    const uint8_t *bytes = (const uint8_t *)(uintptr_t)modules[i].paddr;
    uint32_t hash = 2166136261u;
    for (uint64_t j = 0; j < modules[i].size; j++) hash = (hash ^ bytes[j]) * 16777619u;
    KIT_CHECK(modules[i].paddr % 4096 == 0);
    kit_printf("module %u: %llu bytes at 0x%llx, fnv1a %08x\n", i, (unsigned long long)modules[i].size,
               (unsigned long long)modules[i].paddr, hash);
  }
  if (kit_debugcon_present()) kit_debugcon_puts("hello on the debug port\n");
  return 0;
}
