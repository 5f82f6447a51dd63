/* The xen-disk guest: a small blkfront. It finds its disk under device/vbd in XenStore, waits
 * for the backend's InitWait, grants a ring page, allocates an event channel for domain 0,
 * publishes ring-ref/event-channel/protocol and Initialised in a transaction, waits for
 * Connected, and then reads, writes, flushes (and discards, when offered) through the ring; it
 * sends two malformed requests on purpose, then closes the device and powers off.
 * The test's image holds "xenkvm disk sector N" at the start of each sector N. */
#include "kit/xenstore.h"

#define UPCALL_VECTOR 0xf0
#define OP_READ 0
#define OP_WRITE 1
#define OP_FLUSH 3
#define OP_DISCARD 5
#define RING_SLOTS 32

struct grant_entry {
  uint16_t flags, domid;
  uint32_t frame;
};
struct segment {
  uint32_t gref;
  uint8_t first_sect, last_sect, pad[2];
};
struct request {
  uint8_t operation, nr_segments;
  uint16_t handle;
  uint32_t pad;
  uint64_t id, sector;
  struct segment seg[11];
};
struct response {
  uint64_t id;
  uint8_t operation, pad;
  int16_t status;
  uint32_t pad2;
};
union slot {
  struct request request;
  struct response response;
};
struct ring {
  uint32_t req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pad[48];
  union slot slots[RING_SLOTS];
};

static uint8_t grant_frame[4096] __attribute__((aligned(4096)));
static uint8_t ring_page[4096] __attribute__((aligned(4096)));
static uint8_t data[4][4096] __attribute__((aligned(4096)));
static struct grant_entry *grants = (struct grant_entry *)grant_frame;
static struct ring *ring = (struct ring *)ring_page;
static uint32_t next_ref = 8, port, request_producer, response_consumer;
static volatile uint32_t events;

static void on_disk_event(uint32_t p) {
  (void)p;
  events++;
}

static bool equal(const char *a, const char *b) { return kit_strlen(a) == kit_strlen(b) && kit_memcmp(a, b, kit_strlen(a)) == 0; }

/* gnttab_grant_foreign_access(domain 0); flags last, as the frontend must. */
static uint32_t grant(void *page, bool readonly) {
  uint32_t ref = next_ref++;
  grants[ref].domid = 0;
  grants[ref].frame = (uint32_t)((uintptr_t)page >> 12);
  __atomic_store_n(&grants[ref].flags, (uint16_t)(1 | (readonly ? 4 : 0)), __ATOMIC_RELEASE);
  return ref;
}

/* Waits for `path` to read `want` (its watch wakes us). */
static bool wait_for(const char *path, const char *want) {
  char value[32], event_path[128], token[16];
  if (xs_watch(path, path) != 0) KIT_CHECK(equal(xs_error(), "EEXIST"));  /* watching it already */
  for (int i = 0; i < 50; i++) {
    if (xs_read(0, path, value, sizeof(value)) >= 0 && equal(value, want)) return true;
    xs_wait_watch(event_path, sizeof(event_path), token, sizeof(token));
  }
  return false;
}

/* One request through the ring; returns the response's status. */
static int16_t submit(const struct request *request) {
  ring->slots[request_producer % RING_SLOTS].request = *request;
  __atomic_store_n(&ring->req_prod, ++request_producer, __ATOMIC_RELEASE);
  xen_evtchn_send(port);
  for (int i = 0; i < 100000; i++) {
    kit_cli();
    if (__atomic_load_n(&ring->rsp_prod, __ATOMIC_ACQUIRE) != response_consumer) break;
    kit_wait_for_interrupt();
  }
  kit_sti();
  if (ring->rsp_prod == response_consumer) {
    kit_printf("xen-disk: no response to request %llu\n", (unsigned long long)request->id);
    return 99;
  }
  struct response response = ring->slots[response_consumer % RING_SLOTS].response;
  response_consumer++;
  ring->rsp_event = response_consumer + 1;
  KIT_CHECK(response.id == request->id);
  return response.status;
}

static struct request data_request(uint8_t op, uint64_t id, uint64_t sector, uint32_t gref, uint8_t first, uint8_t last) {
  struct request request = {0};
  request.operation = op;
  request.nr_segments = 1;
  request.id = id;
  request.sector = sector;
  request.seg[0] = (struct segment){gref, first, last, {0, 0}};
  return request;
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_start_events(UPCALL_VECTOR) || !xs_init()) return 2;
  KIT_CHECK(xen_gnttab_map_frame(0, grant_frame) == 0);

  char devices[64], path[128], backend[96], value[64];
  KIT_CHECK(xs_request(XS_DIRECTORY, 0, "device/vbd", 11, devices, sizeof(devices)) > 0);
  kit_snprintf(path, sizeof(path), "device/vbd/%s/backend", devices);
  KIT_CHECK(xs_read(0, path, backend, sizeof(backend)) > 0);
  kit_printf("xen-disk: device %s, backend %s\n", devices, backend);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(wait_for(path, "2"));
  if (kit_failures()) return 1;

  /* SHARED_RING_INIT, a port for domain 0, and the handshake in one transaction. */
  ring->req_event = ring->rsp_event = 1;
  uint32_t ring_ref = grant(ring_page, false);
  KIT_CHECK(xen_evtchn_alloc_unbound(0, &port) == 0);
  xen_set_event_handler(port, on_disk_event);
  uint32_t tx = 0;
  KIT_CHECK(xs_transaction_start(&tx) == 0);
  kit_snprintf(path, sizeof(path), "device/vbd/%s/ring-ref", devices);
  kit_snprintf(value, sizeof(value), "%u", ring_ref);
  KIT_CHECK(xs_write(tx, path, value) == 0);
  kit_snprintf(path, sizeof(path), "device/vbd/%s/event-channel", devices);
  kit_snprintf(value, sizeof(value), "%u", port);
  KIT_CHECK(xs_write(tx, path, value) == 0);
  kit_snprintf(path, sizeof(path), "device/vbd/%s/protocol", devices);
  KIT_CHECK(xs_write(tx, path, "x86_64-abi") == 0);
  kit_snprintf(path, sizeof(path), "device/vbd/%s/state", devices);
  KIT_CHECK(xs_write(tx, path, "3") == 0);
  KIT_CHECK(xs_transaction_end(tx, true) == 0);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(wait_for(path, "4"));
  char sectors[24], discard[8] = "0", info[8] = "0";
  kit_snprintf(path, sizeof(path), "%s/info", backend);
  xs_read(0, path, info, sizeof(info));
  const bool read_only = equal(info, "4");  /* VDISK_READONLY */
  kit_snprintf(path, sizeof(path), "%s/sectors", backend);
  KIT_CHECK(xs_read(0, path, sectors, sizeof(sectors)) > 0);
  kit_snprintf(path, sizeof(path), "%s/feature-discard", backend);
  xs_read(0, path, discard, sizeof(discard));
  kit_snprintf(path, sizeof(path), "device/vbd/%s/state", devices);
  KIT_CHECK(xs_write(0, path, "4") == 0);
  kit_printf("xen-disk: connected, %s sectors, discard %s%s\n", sectors, discard, read_only ? ", read-only" : "");
  if (kit_failures()) return 1;

  /* Read sector 0..7; sector 5 is 5 * 512 bytes into the page. */
  uint32_t page0 = grant(data[0], false);
  struct request request = data_request(OP_READ, 1, 0, page0, 0, 7);
  KIT_CHECK(submit(&request) == 0);
  data[0][5 * 512 + 40] = 0;
  kit_printf("xen-disk: read \"%s\" and \"%s\"\n", (char *)data[0], (char *)&data[0][5 * 512]);
  KIT_CHECK(kit_memcmp(data[0], "xenkvm disk sector 0", 20) == 0);

  /* Write sector 16 from a read-only grant, flush, read it back into another page. */
  kit_snprintf((char *)data[1], 512, "written by the xen-disk guest");
  uint32_t page1 = grant(data[1], true);
  request = data_request(OP_WRITE, 2, 16, page1, 0, 0);
  if (read_only) {
    KIT_CHECK(submit(&request) == -1);
    kit_printf("xen-disk: read-only, the write was refused\n");
  } else {
    KIT_CHECK(submit(&request) == 0);
    struct request flush = {0};
    flush.operation = OP_FLUSH;
    flush.id = 3;
    KIT_CHECK(submit(&flush) == 0);
    uint32_t page2 = grant(data[2], false);
    request = data_request(OP_READ, 4, 16, page2, 3, 3); /* into the page's sector 3 */
    KIT_CHECK(submit(&request) == 0);
    KIT_CHECK(kit_memcmp(&data[2][3 * 512], "written by the xen-disk guest", 29) == 0);
    kit_printf("xen-disk: wrote, flushed and read back sector 16\n");
  }

  /* Malformed on purpose: 12 segments, and an operation nobody defined. */
  request = data_request(OP_READ, 5, 0, page0, 0, 7);
  request.nr_segments = 12;
  KIT_CHECK(submit(&request) == -1);
  request = data_request(42, 6, 0, page0, 0, 7);
  KIT_CHECK(submit(&request) == -2);
  request = data_request(OP_READ, 7, 0, page1, 0, 7);  /* a read-only grant the device would write */
  KIT_CHECK(submit(&request) == -1);
  kit_printf("xen-disk: malformed requests refused\n");

  if (equal(discard, "1")) {
    struct {
      uint8_t operation, flag;
      uint16_t handle;
      uint32_t pad;
      uint64_t id, sector, nr_sectors;
    } discard_request = {OP_DISCARD, 0, 0, 0, 8, 64, 8};
    struct request raw = {0};
    memcpy(&raw, &discard_request, sizeof(discard_request));
    KIT_CHECK(submit(&raw) == 0);
    request = data_request(OP_READ, 9, 64, page0, 0, 0);
    KIT_CHECK(submit(&request) == 0);
    KIT_CHECK(data[0][0] == 0 && data[0][100] == 0);
    kit_printf("xen-disk: discarded sectors read as zeros\n");
  }

  /* Close: Closing, then Closed once the backend followed. */
  kit_snprintf(path, sizeof(path), "device/vbd/%s/state", devices);
  KIT_CHECK(xs_write(0, path, "5") == 0);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(wait_for(path, "5"));
  kit_snprintf(path, sizeof(path), "device/vbd/%s/state", devices);
  KIT_CHECK(xs_write(0, path, "6") == 0);
  KIT_CHECK(grants[page0].flags == 1);  /* nothing of ours is still mapped */
  kit_printf("xen-disk: closed\n");
  (void)events;
  return kit_failures() ? 1 : 0;
}
