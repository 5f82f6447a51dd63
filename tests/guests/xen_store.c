/* The XenStore guest: finds its store through the HVM parameters, reads and writes its own nodes,
 * meets permissions and quotas, runs a transaction, breaks the ring on purpose and reconnects,
 * then advertises control/feature-poweroff and -reboot, watches control/shutdown as Linux's
 * drivers do, and shuts down the way the toolstack asks ("poweroff" or "reboot"). With
 * "selftest" on the command line it powers off right after the checks. */
#include "kit/xenstore.h"

#define UPCALL_VECTOR 0xf0

static bool has_word(const char *cmdline, const char *word) {
  size_t n = kit_strlen(word);
  for (const char *p = cmdline; *p; p++) {
    if ((p == cmdline || p[-1] == ' ') && kit_memcmp(p, word, n) == 0 && (p[n] == ' ' || p[n] == '\0')) return true;
  }
  return false;
}

static bool equal(const char *a, const char *b) { return kit_strlen(a) == kit_strlen(b) && kit_memcmp(a, b, kit_strlen(a)) == 0; }

static void own_nodes(void) {
  char value[256];
  KIT_CHECK(xs_read(0, "domid", value, sizeof(value)) == 1 && equal(value, "1"));
  char name[64];
  KIT_CHECK(xs_read(0, "name", name, sizeof(name)) > 0);
  KIT_CHECK(xs_request(XS_GET_DOMAIN_PATH, 0, "1", 2, value, sizeof(value)) > 0);
  kit_printf("xenstore: I am \"%s\" at %s\n", name, value);
  KIT_CHECK(equal(value, "/local/domain/1"));
  KIT_CHECK(xs_read(0, "cpu/0/availability", value, sizeof(value)) > 0 && equal(value, "online"));

  KIT_CHECK(xs_write(0, "data/hello", "world") == 0);
  KIT_CHECK(xs_read(0, "data/hello", value, sizeof(value)) == 5 && equal(value, "world"));
  KIT_CHECK(xs_read(0, "/local/domain/1/data/hello", value, sizeof(value)) == 5);
  KIT_CHECK(xs_read(0, "data/missing", value, sizeof(value)) == -1 && equal(xs_error(), "ENOENT"));
  /* Not ours: the home is read-only, the root and /tool are dom0's. */
  KIT_CHECK(xs_write(0, "name", "mallory") == -1 && equal(xs_error(), "EACCES"));
  KIT_CHECK(xs_read(0, "/tool", value, sizeof(value)) == -1 && equal(xs_error(), "EACCES"));
  KIT_CHECK(xs_request(XS_RM, 0, "/", 2, 0, 0) == -1 && equal(xs_error(), "EACCES"));
  KIT_CHECK(xs_write(0, "/local/domain/", "x") == -1 && equal(xs_error(), "EINVAL"));
  /* A value over the node-size quota. */
  static char big[3000];
  memset(big, 'x', sizeof(big) - 1);
  KIT_CHECK(xs_write(0, "data/big", big) == -1 && equal(xs_error(), "ENOSPC"));
  kit_printf("xenstore: reads, writes and refusals as expected\n");
}

static void transaction(void) {
  uint32_t tx = 0;
  char value[64];
  KIT_CHECK(xs_transaction_start(&tx) == 0 && tx != 0);
  KIT_CHECK(xs_write(tx, "data/in-tx", "1") == 0);
  KIT_CHECK(xs_read(0, "data/in-tx", value, sizeof(value)) == -1);  /* not yet */
  KIT_CHECK(xs_read(tx, "data/in-tx", value, sizeof(value)) == 1);
  KIT_CHECK(xs_transaction_end(tx, true) == 0);
  KIT_CHECK(xs_read(0, "data/in-tx", value, sizeof(value)) == 1);
  KIT_CHECK(xs_transaction_end(tx, true) == -1 && equal(xs_error(), "ENOENT"));
  kit_printf("xenstore: transaction %u committed\n", tx);
}

/* Kicks the store and sleeps until `*word` is `value`: interrupts off from the check to the HLT
 * (STI; HLT takes the store's reply only once halted), so the wake-up cannot be missed. */
static bool wait_for_word(volatile uint32_t *word, uint32_t value) {
  for (int i = 0; i < 100000; i++) {
    kit_cli();
    if (*word == value) break;
    xen_evtchn_send(xs_port());
    kit_wait_for_interrupt();
  }
  kit_sti();
  return *word == value;
}

/* A payload over 4096 bytes is a protocol error: the server stops the ring and says so in the
 * error field; the guest asks to reconnect and is served again. */
static void broken_ring_and_reconnection(void) {
  struct xs_ring *ring = xs_ring_page();
  uint32_t header[4] = {XS_READ, 99, 0, 5000};
  uint32_t producer = ring->req_prod;
  for (uint32_t i = 0; i < sizeof(header); i++) ring->req[(producer + i) % 1024] = ((char *)header)[i];
  __atomic_store_n(&ring->req_prod, producer + sizeof(header), __ATOMIC_RELEASE);
  KIT_CHECK(wait_for_word(&ring->error, 3 /* XENSTORE_ERROR_PROTO */));
  kit_printf("xenstore: oversized payload -> ring error %u\n", ring->error);
  ring->connection = 1; /* XENSTORE_RECONNECT */
  KIT_CHECK(wait_for_word(&ring->connection, 0));
  KIT_CHECK(ring->error == 0 && ring->req_prod == 0 && ring->rsp_prod == 0);
  char value[64];
  KIT_CHECK(xs_read(0, "data/hello", value, sizeof(value)) == 5);
  kit_printf("xenstore: reconnected, served again\n");
}

/* Linux's drivers/xen/manage.c does this: read and clear control/shutdown in a transaction. */
static uint32_t wait_for_shutdown_request(void) {
  char path[256], token[64], reason[32];
  KIT_CHECK(xs_write(0, "control/feature-poweroff", "1") == 0);
  KIT_CHECK(xs_write(0, "control/feature-reboot", "1") == 0);
  KIT_CHECK(xs_watch("control/shutdown", "shutdown") == 0);
  xs_wait_watch(path, sizeof(path), token, sizeof(token)); /* every new watch fires once */
  KIT_CHECK(equal(path, "control/shutdown") && equal(token, "shutdown"));
  kit_printf("xenstore: ready for control/shutdown\n");
  for (;;) {
    xs_wait_watch(path, sizeof(path), token, sizeof(token));
    uint32_t tx = 0;
    if (xs_transaction_start(&tx) != 0) continue;
    long length = xs_read(tx, "control/shutdown", reason, sizeof(reason));
    if (length <= 0) {
      xs_transaction_end(tx, false);
      continue;
    }
    KIT_CHECK(xs_write(tx, "control/shutdown", "") == 0);
    if (xs_transaction_end(tx, true) != 0) continue; /* EAGAIN: look again */
    kit_printf("xenstore: asked to %s\n", reason);
    if (equal(reason, "poweroff") || equal(reason, "halt")) return 0;
    if (equal(reason, "reboot")) return 1;
    kit_printf("xenstore: ignoring \"%s\"\n", reason);
  }
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  if (!xen_start_events(UPCALL_VECTOR)) return 2;
  if (!xs_init()) return 2;
  own_nodes();
  transaction();
  broken_ring_and_reconnection();
  if (kit_failures()) return 1;
  uint32_t reason = 0;
  if (!has_word(cmdline, "selftest")) reason = wait_for_shutdown_request();
  if (kit_failures()) return 1;
  kit_printf("PASS: SCHEDOP_shutdown reason %u\n", reason);
  xen_shutdown(reason);
  return 3;
}
