#include "kit.h"

#define COM1 0x3f8
#define DEBUGCON 0xe9
#define EXIT_PORT 0xf4

static int failures;

/* The compiler may emit calls to these even in freestanding code. */
void *memset(void *d, int c, size_t n) {
  unsigned char *p = d;
  while (n--) *p++ = (unsigned char)c;
  return d;
}
void *memcpy(void *d, const void *s, size_t n) {
  unsigned char *p = d;
  const unsigned char *q = s;
  while (n--) *p++ = *q++;
  return d;
}
size_t kit_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}
int kit_memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *p = a, *q = b;
  for (size_t i = 0; i < n; i++) {
    if (p[i] != q[i]) return p[i] < q[i] ? -1 : 1;
  }
  return 0;
}

static void serial_init(void) {
  kit_outb(COM1 + 1, 0x00); /* no interrupts */
  kit_outb(COM1 + 3, 0x80); /* DLAB */
  kit_outb(COM1 + 0, 0x01); /* 115200 baud */
  kit_outb(COM1 + 1, 0x00);
  kit_outb(COM1 + 3, 0x03); /* 8N1 */
  kit_outb(COM1 + 2, 0xc7); /* FIFOs on, cleared */
}

void kit_putc(char c) {
  if (c == '\n') kit_putc('\r');
  for (int spins = 0; spins < 100000 && !(kit_inb(COM1 + 5) & 0x20); spins++) {
  }
  kit_outb(COM1, (uint8_t)c);
}

void kit_puts(const char *s) {
  while (*s) kit_putc(*s++);
}

bool kit_debugcon_present(void) { return kit_inb(DEBUGCON) == DEBUGCON; }

void kit_debugcon_puts(const char *s) {
  while (*s) kit_outb(DEBUGCON, (uint8_t)*s++);
}

struct out {
  char *buffer;
  size_t size;
  size_t length;
};

static void emit(struct out *out, char c) {
  if (out->length + 1 < out->size) out->buffer[out->length] = c;
  out->length++;
}

static void emit_number(struct out *out, unsigned long long value, unsigned base, bool upper, bool negative,
                        int width, char pad) {
  char digits[24];
  int n = 0;
  const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    digits[n++] = set[value % base];
    value /= base;
  } while (value);
  int length = n + (negative ? 1 : 0);
  if (negative && pad == '0') emit(out, '-');
  for (; length < width; length++) emit(out, pad);
  if (negative && pad != '0') emit(out, '-');
  while (n) emit(out, digits[--n]);
}

int kit_vsnprintf(char *buffer, size_t size, const char *format, va_list args) {
  struct out out = {buffer, size, 0};
  for (const char *p = format; *p; p++) {
    if (*p != '%') {
      emit(&out, *p);
      continue;
    }
    p++;
    char pad = ' ';
    int width = 0;
    if (*p == '0') {
      pad = '0';
      p++;
    }
    while (*p >= '0' && *p <= '9') width = width * 10 + (*p++ - '0');
    int longs = 0;
    while (*p == 'l') {
      longs++;
      p++;
    }
    switch (*p) {
      case 'd':
      case 'i': {
        long long v = longs >= 2 ? va_arg(args, long long) : longs == 1 ? va_arg(args, long) : va_arg(args, int);
        emit_number(&out, v < 0 ? -(unsigned long long)v : (unsigned long long)v, 10, false, v < 0, width, pad);
        break;
      }
      case 'u':
      case 'x':
      case 'X': {
        unsigned long long v = longs >= 2   ? va_arg(args, unsigned long long)
                               : longs == 1 ? va_arg(args, unsigned long)
                                            : va_arg(args, unsigned int);
        emit_number(&out, v, *p == 'u' ? 10 : 16, *p == 'X', false, width, pad);
        break;
      }
      case 'p':
        emit(&out, '0');
        emit(&out, 'x');
        emit_number(&out, (uintptr_t)va_arg(args, void *), 16, false, false, width, pad);
        break;
      case 'c':
        emit(&out, (char)va_arg(args, int));
        break;
      case 's': {
        const char *s = va_arg(args, const char *);
        if (!s) s = "(null)";
        for (int length = (int)kit_strlen(s); length < width; length++) emit(&out, ' ');
        while (*s) emit(&out, *s++);
        break;
      }
      case '%':
        emit(&out, '%');
        break;
      case '\0':
        p--;
        break;
      default:
        emit(&out, '%');
        emit(&out, *p);
        break;
    }
  }
  if (size) buffer[out.length < size ? out.length : size - 1] = '\0';
  return (int)out.length;
}

int kit_snprintf(char *buffer, size_t size, const char *format, ...) {
  va_list args;
  va_start(args, format);
  int n = kit_vsnprintf(buffer, size, format, args);
  va_end(args);
  return n;
}

int kit_printf(const char *format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  int n = kit_vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  kit_puts(buffer);
  return n;
}

void kit_check(bool ok, const char *what, const char *file, int line) {
  if (ok) return;
  failures++;
  kit_printf("check failed: %s (%s:%d)\n", what, file, line);
}

int kit_failures(void) { return failures; }

void kit_power_off(uint32_t status) {
  kit_outl(EXIT_PORT, status);
  for (;;) __asm__ volatile("cli; hlt");
}

/* ---- Interrupts */

#define LAPIC_BASE 0xfee00000ul

struct idt_gate {
  uint16_t offset_low, selector;
  uint8_t ist, type;
  uint16_t offset_mid;
  uint32_t offset_high, reserved;
};
static struct idt_gate idt[256] __attribute__((aligned(16)));
static kit_interrupt_handler handlers[256];
extern char kit_interrupt_stubs[];

void kit_set_interrupt_handler(uint32_t vector, kit_interrupt_handler handler) {
  if (vector < 256) handlers[vector] = handler;
}

void kit_set_gate_options(uint32_t vector, uint8_t dpl, uint8_t ist) {
  if (vector >= 256) return;
  idt[vector].type = (uint8_t)((idt[vector].type & 0x9f) | ((dpl & 3) << 5));
  idt[vector].ist = ist & 7;
}

void kit_dispatch_interrupt(uint64_t vector, struct kit_interrupt_frame *frame) {
  if (vector < 256 && handlers[vector]) {
    handlers[vector]((uint32_t)vector, frame);
    return;
  }
  kit_printf("unexpected interrupt %lu at RIP %lx (error code %lx)\n", (unsigned long)vector,
             (unsigned long)frame->rip, (unsigned long)frame->error_code);
  kit_puts("FAIL (status 99)\n");
  kit_power_off(99);
}

static void idt_init(void) {
  for (int v = 0; v < 256; v++) {
    uint64_t target = (uint64_t)(uintptr_t)(kit_interrupt_stubs + 16 * v);
    idt[v].offset_low = (uint16_t)target;
    idt[v].selector = 0x18; /* the kit's 64-bit code segment */
    idt[v].ist = 0;
    idt[v].type = 0x8e; /* present, interrupt gate */
    idt[v].offset_mid = (uint16_t)(target >> 16);
    idt[v].offset_high = (uint32_t)(target >> 32);
    idt[v].reserved = 0;
  }
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) descriptor = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
  __asm__ volatile("lidt %0" ::"m"(descriptor));
}

void kit_lapic_eoi(void) { *(volatile uint32_t *)(LAPIC_BASE + 0xb0) = 0; }
uint32_t kit_lapic_id(void) { return *(volatile uint32_t *)(LAPIC_BASE + 0x20) >> 24; }

#define IOAPIC_BASE 0xfec00000ul

void kit_ioapic_route(uint32_t pin, uint8_t vector, uint8_t destination, bool level) {
  volatile uint32_t *select = (volatile uint32_t *)IOAPIC_BASE;
  volatile uint32_t *window = (volatile uint32_t *)(IOAPIC_BASE + 0x10);
  *select = 0x11 + 2 * pin;
  *window = (uint32_t)destination << 24;
  *select = 0x10 + 2 * pin;
  *window = vector | (level ? 1u << 15 : 0);
}

static void lapic_enable(void) { *(volatile uint32_t *)(LAPIC_BASE + 0xf0) = 0x1ff; }

/* A secondary vCPU in long mode: the IDT and LAPIC, then the main xen_start_vcpu gave. */
extern void (*volatile kit_ap_main)(uint32_t vcpu);
void kit_ap_entry(uint32_t vcpu) {
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) descriptor = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
  __asm__ volatile("lidt %0" ::"m"(descriptor));
  lapic_enable();
  if (kit_ap_main) kit_ap_main(vcpu);
  for (;;) __asm__ volatile("cli; hlt");
}

/* Called by the entry code in long mode. */
void kit_start(uint32_t start_info_address) {
  serial_init();
  idt_init();
  lapic_enable();
  const struct hvm_start_info *start_info = (const struct hvm_start_info *)(uintptr_t)start_info_address;
  int status = guest_main(start_info);
  if (status == 0 && failures) status = 1;
  if (status == 0) {
    kit_puts("PASS\n");
  } else {
    kit_printf("FAIL (status %d)\n", status);
  }
  kit_power_off((uint32_t)status);
}
