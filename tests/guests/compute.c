/* The compute benchmark's guest (tests/bench/emu_compute.py): plain CPU work between two console
 * markers, the same on any x86 machine, so the emu accelerator can be timed against QEMU's TCG on
 * the same code. Four kernels of the shapes real guests spend their time in -- a table-driven CRC
 * (loads, shifts, a data-dependent index), a prime sieve (strided stores, a tight inner loop),
 * recursion (calls and returns), a byte copy with a checksum (short blocks, a branch per byte) --
 * each printed with a result the host compares between the two runs. `rounds=N` on the command
 * line scales the work (default 8). No Xen, no interrupts: nothing but the CPU and the serial
 * port. */
#include "kit/kit.h"

#define BUFFER_SIZE (64 * 1024)
#define SIEVE_SIZE (1 << 20)

static uint8_t buffer[BUFFER_SIZE];
static uint8_t copy[BUFFER_SIZE];
static uint8_t composite[SIEVE_SIZE];
static uint32_t crc_table[256];

static unsigned rounds_from(const char *cmdline) {
  static const char key[] = "rounds=";
  for (const char *p = cmdline; p && *p; p++) {
    unsigned i = 0;
    while (key[i] && p[i] == key[i]) i++;
    if (key[i]) continue;
    unsigned value = 0;
    for (p += i; *p >= '0' && *p <= '9' && value < 100000; p++) value = value * 10 + (unsigned)(*p - '0');
    return value ? value : 1;
  }
  return 8;
}

static uint32_t crc32(const uint8_t *data, uint32_t size) {
  uint32_t crc = 0xffffffffu;
  for (uint32_t i = 0; i < size; i++) crc = crc_table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static uint32_t count_primes(void) {
  for (uint32_t i = 0; i < SIEVE_SIZE; i++) composite[i] = 0;
  uint32_t primes = 0;
  for (uint32_t i = 2; i < SIEVE_SIZE; i++) {
    if (composite[i]) continue;
    primes++;
    for (uint64_t j = (uint64_t)i * i; j < SIEVE_SIZE; j += i) composite[j] = 1;
  }
  return primes;
}

/* Not folded into a loop by the compiler: the calls are the point. */
__attribute__((noinline)) static uint32_t fibonacci(uint32_t n) {
  return n < 2 ? n : fibonacci(n - 1) + fibonacci(n - 2);
}

static uint32_t copy_and_sum(uint32_t seed) {
  uint32_t sum = 0;
  for (uint32_t i = 0; i < BUFFER_SIZE; i++) {
    const uint8_t byte = buffer[(i * 7 + seed) % BUFFER_SIZE];
    copy[i] = byte;
    if (byte & 1) {
      sum += byte;
    } else {
      sum ^= (uint32_t)byte << (i & 15);
    }
  }
  return sum;
}

int guest_main(const struct hvm_start_info *start_info) {
  const unsigned rounds = rounds_from((const char *)(uintptr_t)start_info->cmdline_paddr);
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
  uint32_t state = 12345;
  for (uint32_t i = 0; i < BUFFER_SIZE; i++) {
    state = state * 1103515245u + 12345u;
    buffer[i] = (uint8_t)(state >> 16);
  }
  kit_printf("compute: start (%u rounds)\n", rounds);
  uint32_t crc = 0, primes = 0, fib = 0, sum = 0;
  for (unsigned round = 0; round < rounds; round++) {
    for (int pass = 0; pass < 16; pass++) crc ^= crc32(buffer, BUFFER_SIZE) + (uint32_t)pass;
    primes += count_primes();
    fib += fibonacci(24);
    for (uint32_t pass = 0; pass < 16; pass++) sum += copy_and_sum(pass + round);
  }
  kit_printf("compute: done crc %08x primes %u fibonacci %u sum %08x\n", crc, primes, fib, sum);
  KIT_CHECK(primes == rounds * 82025u); /* pi(2^20) */
  KIT_CHECK(fib == rounds * 46368u);
  return 0;
}
