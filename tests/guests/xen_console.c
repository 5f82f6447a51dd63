/* The PV console guest: finds its console ring through HVM_PARAM_CONSOLE_PFN/_EVTCHN, as Linux's
 * hvc_xen does for the primary console, writes through it (more than the ring holds, so it waits
 * for the backend to make room), then corrupts out_prod on purpose and checks that the backend
 * ignores it and still serves the ring once the index is sane again. With "echo" on its command
 * line it then reads lines from in[] (host input, `xenkvmctl console`), answers each with
 * "echo: LINE", and powers off at the line "quit". */
#include "kit/xenstore.h"

#define UPCALL_VECTOR 0xf0

struct xencons {
  char in[1024], out[2048];
  uint32_t in_cons, in_prod, out_cons, out_prod;
};

static struct xencons *ring;
static uint32_t port;
static volatile uint32_t notifications;

static void on_console_event(uint32_t p) {
  (void)p;
  notifications++;
}

/* Writes `text` through out[], sleeping (STI; HLT with the check under CLI) while it is full. */
static void console_write(const char *text) {
  uint32_t length = kit_strlen(text);
  while (length > 0) {
    kit_cli();
    uint32_t producer = ring->out_prod;
    uint32_t used = producer - __atomic_load_n(&ring->out_cons, __ATOMIC_ACQUIRE);
    if (used >= sizeof(ring->out)) {
      xen_evtchn_send(port);
      kit_wait_for_interrupt();
      continue;
    }
    kit_sti();
    uint32_t count = sizeof(ring->out) - used < length ? sizeof(ring->out) - used : length;
    for (uint32_t i = 0; i < count; i++) ring->out[(producer + i) % sizeof(ring->out)] = text[i];
    __atomic_store_n(&ring->out_prod, producer + count, __ATOMIC_RELEASE);
    text += count;
    length -= count;
  }
  xen_evtchn_send(port);
}

/* Sleeps until the backend has taken everything written so far. */
static bool console_drained(void) {
  for (int i = 0; i < 100000; i++) {
    kit_cli();
    if (__atomic_load_n(&ring->out_cons, __ATOMIC_ACQUIRE) == ring->out_prod) break;
    xen_evtchn_send(port);
    kit_wait_for_interrupt();
  }
  kit_sti();
  return ring->out_cons == ring->out_prod;
}

/* The next input line (without its end), sleeping until the backend puts bytes in in[]. */
static uint32_t console_read_line(char *line, uint32_t size) {
  uint32_t length = 0;
  for (;;) {
    kit_cli();
    uint32_t consumer = ring->in_cons;
    if (__atomic_load_n(&ring->in_prod, __ATOMIC_ACQUIRE) == consumer) {
      kit_wait_for_interrupt();
      continue;
    }
    kit_sti();
    char c = ring->in[consumer % sizeof(ring->in)];
    __atomic_store_n(&ring->in_cons, consumer + 1, __ATOMIC_RELEASE);
    xen_evtchn_send(port);
    if (c == '\n' || c == '\r') {
      if (length == 0) continue;
      line[length] = '\0';
      return length;
    }
    if (length + 1 < size) line[length++] = c;
  }
}

static bool is_word(const char *text, const char *word) {
  uint32_t n = kit_strlen(word);
  return kit_strlen(text) == n && kit_memcmp(text, word, n) == 0;
}

static void echo_until_quit(void) {
  console_write("hvc0: echo mode: type lines, \"quit\" ends\n");
  static char line[128], answer[160];
  for (;;) {
    console_read_line(line, sizeof(line));
    kit_snprintf(answer, sizeof(answer), "echo: %s\n", line);
    console_write(answer);
    if (is_word(line, "quit")) return;
  }
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  if (!xen_start_events(UPCALL_VECTOR)) return 2;
  uint64_t pfn = 0, evtchn = 0;
  KIT_CHECK(xen_hvm_get_param(17 /* HVM_PARAM_CONSOLE_PFN */, &pfn) == 0 && pfn != 0);
  KIT_CHECK(xen_hvm_get_param(18 /* HVM_PARAM_CONSOLE_EVTCHN */, &evtchn) == 0 && evtchn != 0);
  if (kit_failures()) return 1;
  ring = (struct xencons *)(uintptr_t)(pfn << 12);
  port = (uint32_t)evtchn;
  xen_set_event_handler(port, on_console_event);
  kit_printf("PV console: ring at pfn %x, port %u\n", (uint32_t)pfn, port);

  console_write("hvc0: hello through the Xen PV console\n");
  /* 40 lines of 80: more than the 2048-byte ring, so the writer waits for room. */
  static char line[82];
  for (int n = 0; n < 40; n++) {
    int length = kit_snprintf(line, sizeof(line), "hvc0: line %02d ", n);
    while (length < 79) line[length++] = (char)('a' + n % 26);
    line[79] = '\n';
    line[80] = '\0';
    console_write(line);
  }
  KIT_CHECK(console_drained());

  /* Also visible in XenStore, as libxl writes it. */
  char value[32];
  KIT_CHECK(xs_init());
  KIT_CHECK(xs_read(0, "console/port", value, sizeof(value)) > 0);
  kit_printf("console/port in XenStore: %s\n", value);

  /* A producer far beyond the ring: the backend must take nothing and stay alive. */
  uint32_t consumer = ring->out_cons;
  __atomic_store_n(&ring->out_prod, consumer + 5000, __ATOMIC_RELEASE);
  xen_evtchn_send(port);
  for (volatile int i = 0; i < 200000; i++) {
  }
  KIT_CHECK(ring->out_cons == consumer);
  __atomic_store_n(&ring->out_prod, consumer, __ATOMIC_RELEASE);
  console_write("hvc0: still served after a bad index\n");
  KIT_CHECK(console_drained());
  if (kit_failures()) return 1;
  kit_printf("PASS: PV console\n");
  if (cmdline != 0 && kit_memcmp(cmdline, "echo", 4) == 0) {
    echo_until_quit();
    KIT_CHECK(console_drained());
  }
  xen_shutdown(0);
  return 3;
}
