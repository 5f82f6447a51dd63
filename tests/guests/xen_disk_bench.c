/* The xen-disk benchmark guest: the kit's blkfront keeps QD 4 KiB requests in flight (a closed
 * loop: each response is replaced by a new request), for each depth of 1, 8 and 32, and prints
 * how long `requests` of them took in Xen system time (the pvclock):
 *   xen-disk-bench: read qd=8 requests=20000 ns=123456789
 * Its command line: "requests=N" (default 20000) and "write" (default: reads), random sectors
 * 4 KiB-aligned within the disk. Each slot keeps one granted page for the whole run and the
 * frontend offers feature-persistent, as Linux's blkfront does, so the backend maps each page once.
 * tests/bench/xen_disk_guest_benchmark.py runs it beside fio. */
#include "kit/blkfront.h"

#define UPCALL_VECTOR 0xf0
#define MAX_DEPTH 32

static uint8_t data[MAX_DEPTH][4096] __attribute__((aligned(4096)));
static void on_disk_event(uint32_t p) { (void)p; }

static uint64_t parse_number(const char *text) {
  uint64_t value = 0;
  while (*text >= '0' && *text <= '9') value = value * 10 + (uint64_t)(*text++ - '0');
  return value;
}

/* The value of "key=" in the command line, or `fallback`. */
static uint64_t option(const char *cmdline, const char *key, uint64_t fallback) {
  const size_t length = kit_strlen(key);
  for (const char *at = cmdline; at && *at; at++) {
    if ((at == cmdline || at[-1] == ' ') && kit_memcmp(at, key, length) == 0 && at[length] == '=') {
      return parse_number(at + length + 1);
    }
  }
  return fallback;
}

static bool has_word(const char *cmdline, const char *word) {
  const size_t length = kit_strlen(word);
  for (const char *at = cmdline; at && *at; at++) {
    if ((at == cmdline || at[-1] == ' ') && kit_memcmp(at, word, length) == 0 && (at[length] == ' ' || !at[length])) {
      return true;
    }
  }
  return false;
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  if (!xen_start_events(UPCALL_VECTOR) || !xs_init() || !xenbus_grants_init()) return 2;
  struct blkfront front;
  KIT_CHECK(blkfront_connect(&front, on_disk_event, /*persistent=*/true));  /* its grants last the run */
  if (kit_failures()) return 1;
  const uint64_t requests = option(cmdline, "requests", 20000);
  const bool write = has_word(cmdline, "write");
  const uint64_t blocks = parse_number(front.sectors) / 8;
  KIT_CHECK(blocks > 0 && requests > 0);
  if (kit_failures()) return 1;
  uint32_t grefs[MAX_DEPTH];
  for (int i = 0; i < MAX_DEPTH; i++) grefs[i] = xenbus_grant(data[i], write);
  uint64_t random = 88172645463325252ull;
  const uint32_t depths[] = {1, 8, 32};
  for (int d = 0; d < 3; d++) {
    const uint32_t depth = depths[d];
    uint64_t issued = 0, done = 0;
    const uint64_t start = xen_system_time(0);
    for (; issued < depth && issued < requests; issued++) {
      random ^= random << 13, random ^= random >> 7, random ^= random << 17;  /* xorshift64 */
      struct blkif_request request =
          blkfront_request(write ? BLKIF_OP_WRITE : BLKIF_OP_READ, issued, (random % blocks) * 8, grefs[issued], 0, 7);
      blkfront_put(&front, &request);
    }
    blkfront_push(&front);
    while (done < requests) {
      struct blkif_response response;
      if (!blkfront_take(&front, &response, 1000000)) break;
      KIT_CHECK(response.status == 0);
      done++;
      if (issued < requests) {
        random ^= random << 13, random ^= random >> 7, random ^= random << 17;
        const uint32_t slot = (uint32_t)(response.id % MAX_DEPTH);
        struct blkif_request request =
            blkfront_request(write ? BLKIF_OP_WRITE : BLKIF_OP_READ, slot, (random % blocks) * 8, grefs[slot], 0, 7);
        blkfront_put(&front, &request);
        blkfront_push(&front);
        issued++;
      }
    }
    const uint64_t elapsed = xen_system_time(0) - start;
    kit_printf("xen-disk-bench: %s qd=%u requests=%llu ns=%llu\n", write ? "write" : "read", depth,
               (unsigned long long)done, (unsigned long long)elapsed);
  }
  KIT_CHECK(blkfront_close(&front));
  return kit_failures() ? 1 : 0;
}
