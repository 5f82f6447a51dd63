/* The xen-disk guest: the kit's blkfront (kit/blkfront.h) connects to the first vbd, then reads,
 * writes, flushes (and discards, when offered) through the ring; it sends malformed requests on
 * purpose, then closes the device and powers off.
 * The test's image holds "xenkvm disk sector N" at the start of each sector N. */
#include "kit/blkfront.h"

#define UPCALL_VECTOR 0xf0

static uint8_t data[4][4096] __attribute__((aligned(4096)));
static volatile uint32_t events;

static void on_disk_event(uint32_t p) {
  (void)p;
  events++;
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_start_events(UPCALL_VECTOR) || !xs_init() || !xenbus_grants_init()) return 2;
  struct blkfront front;
  KIT_CHECK(blkfront_connect(&front, on_disk_event, false));
  if (kit_failures()) return 1;
  kit_printf("xen-disk: connected, %s sectors, discard %s%s\n", front.sectors, front.discard,
             front.read_only ? ", read-only" : "");

  /* Read sector 0..7; sector 5 is 5 * 512 bytes into the page. */
  uint32_t page0 = xenbus_grant(data[0], false);
  struct blkif_request request = blkfront_request(BLKIF_OP_READ, 1, 0, page0, 0, 7);
  KIT_CHECK(blkfront_submit(&front, &request) == 0);
  data[0][5 * 512 + 40] = 0;
  kit_printf("xen-disk: read \"%s\" and \"%s\"\n", (char *)data[0], (char *)&data[0][5 * 512]);
  KIT_CHECK(kit_memcmp(data[0], "xenkvm disk sector 0", 20) == 0);

  /* Write sector 16 from a read-only grant, flush, read it back into another page. */
  kit_snprintf((char *)data[1], 512, "written by the xen-disk guest");
  uint32_t page1 = xenbus_grant(data[1], true);
  request = blkfront_request(BLKIF_OP_WRITE, 2, 16, page1, 0, 0);
  if (front.read_only) {
    KIT_CHECK(blkfront_submit(&front, &request) == -1);
    kit_printf("xen-disk: read-only, the write was refused\n");
  } else {
    KIT_CHECK(blkfront_submit(&front, &request) == 0);
    struct blkif_request flush = {0};
    flush.operation = BLKIF_OP_FLUSH;
    flush.id = 3;
    KIT_CHECK(blkfront_submit(&front, &flush) == 0);
    uint32_t page2 = xenbus_grant(data[2], false);
    request = blkfront_request(BLKIF_OP_READ, 4, 16, page2, 3, 3); /* into the page's sector 3 */
    KIT_CHECK(blkfront_submit(&front, &request) == 0);
    KIT_CHECK(kit_memcmp(&data[2][3 * 512], "written by the xen-disk guest", 29) == 0);
    kit_printf("xen-disk: wrote, flushed and read back sector 16\n");
  }

  /* Malformed on purpose: 12 segments, and an operation nobody defined. */
  request = blkfront_request(BLKIF_OP_READ, 5, 0, page0, 0, 7);
  request.nr_segments = 12;
  KIT_CHECK(blkfront_submit(&front, &request) == -1);
  request = blkfront_request(42, 6, 0, page0, 0, 7);
  KIT_CHECK(blkfront_submit(&front, &request) == -2);
  request = blkfront_request(BLKIF_OP_READ, 7, 0, page1, 0, 7); /* a read-only grant the device would write */
  KIT_CHECK(blkfront_submit(&front, &request) == -1);
  kit_printf("xen-disk: malformed requests refused\n");

  if (kit_streq(front.discard, "1")) {
    struct {
      uint8_t operation, flag;
      uint16_t handle;
      uint32_t pad;
      uint64_t id, sector, nr_sectors;
    } discard_request = {BLKIF_OP_DISCARD, 0, 0, 0, 8, 64, 8};
    struct blkif_request raw = {0};
    memcpy(&raw, &discard_request, sizeof(discard_request));
    KIT_CHECK(blkfront_submit(&front, &raw) == 0);
    request = blkfront_request(BLKIF_OP_READ, 9, 64, page0, 0, 0);
    KIT_CHECK(blkfront_submit(&front, &request) == 0);
    KIT_CHECK(data[0][0] == 0 && data[0][100] == 0);
    kit_printf("xen-disk: discarded sectors read as zeros\n");
  }

  KIT_CHECK(blkfront_close(&front));
  KIT_CHECK(xenbus_grant_flags(page0) == 1); /* nothing of ours is still mapped */
  kit_printf("xen-disk: closed\n");
  (void)events;
  return kit_failures() ? 1 : 0;
}
