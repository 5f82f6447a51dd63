/* The test-guest kit: what a freestanding test kernel needs to talk to the outside (port I/O, a
 * console on COM1 and the 0xe9 debug port, printf), to check things and report, and to power off.
 * A guest defines `int guest_main(const struct hvm_start_info *start_info)`; the kit prints
 * "PASS" when it returns 0, "FAIL (status N)" otherwise, and powers off with that status. */
#ifndef XENKVM_TESTS_GUESTS_KIT_KIT_H_
#define XENKVM_TESTS_GUESTS_KIT_KIT_H_

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* hvm_start_info and the memory map (Xen's public ABI, version 1). */
struct hvm_start_info {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};
struct hvm_memmap_table_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};
#define KIT_HVM_START_MAGIC 0x336ec578u

int guest_main(const struct hvm_start_info *start_info);

static inline void kit_outb(uint16_t port, uint8_t value) { __asm__ volatile("outb %0, %1" ::"a"(value), "Nd"(port)); }
static inline void kit_outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" ::"a"(value), "Nd"(port)); }
static inline uint8_t kit_inb(uint16_t port) {
  uint8_t value;
  __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
  return value;
}
static inline void kit_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
  __asm__ volatile("cpuid" : "=a"(regs[0]), "=b"(regs[1]), "=c"(regs[2]), "=d"(regs[3]) : "a"(leaf), "c"(subleaf));
}

/* Console: COM1 (16550A). */
void kit_putc(char c);
void kit_puts(const char *s);
/* The 0xe9 debug port, separately (true if the port answers 0xe9). */
bool kit_debugcon_present(void);
void kit_debugcon_puts(const char *s);
/* printf to the console: %s %c %d %i %u %x %X %p, the l and ll modifiers, a width and the 0 flag. */
int kit_printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
int kit_vsnprintf(char *buffer, size_t size, const char *format, va_list args);
int kit_snprintf(char *buffer, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));

/* Checks: a failed check prints "check failed: <what> (file:line)" and makes the guest fail. */
#define KIT_CHECK(condition) kit_check((condition), #condition, __FILE__, __LINE__)
void kit_check(bool ok, const char *what, const char *file, int line);
int kit_failures(void);

/* Powers the VM off with `status` through xenkvm's exit port (0xf4). */
__attribute__((noreturn)) void kit_power_off(uint32_t status);

size_t kit_strlen(const char *s);
int kit_memcmp(const void *a, const void *b, size_t n);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

#endif  /* XENKVM_TESTS_GUESTS_KIT_KIT_H_ */

/* ---- Interrupts (64-bit IDT, installed by kit_start). */
/* The CPU's frame as the handler sees it. */
struct kit_interrupt_frame {
  uint64_t error_code;
  uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*kit_interrupt_handler)(uint32_t vector, struct kit_interrupt_frame *frame);
/* Installs `handler` for `vector`; an unhandled exception prints itself and fails the guest. */
void kit_set_interrupt_handler(uint32_t vector, kit_interrupt_handler handler);
/* The gate's privilege level (3: INT n from user mode may use it) and IST slot (0: none). */
void kit_set_gate_options(uint32_t vector, uint8_t dpl, uint8_t ist);
static inline void kit_sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void kit_cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* Waits for an interrupt with interrupts enabled (STI; HLT), leaving them enabled. */
static inline void kit_wait_for_interrupt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
/* The local APIC (software-enabled by kit_start; KVM accepts fixed interrupts only then). An
 * interrupt that came through it needs an EOI; on emu these are MMIO stores the VMM ignores. */
void kit_lapic_eoi(void);
/* Routes IOAPIC input `pin` to `vector` on APIC `destination`, level-triggered active-high or edge. */
void kit_ioapic_route(uint32_t pin, uint8_t vector, uint8_t destination, bool level);
uint32_t kit_lapic_id(void);

static inline uint64_t kit_rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void kit_wrmsr(uint32_t msr, uint64_t value) {
  __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}
