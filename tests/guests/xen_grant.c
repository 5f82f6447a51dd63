/* The grant-table guest: version 1 as Linux's PVH gnttab code uses it. It asks the table's size,
 * maps two frames over pages of its own RAM (XENMAPSPACE_grant_table), finds the toolstack's
 * reserved entries (0: the console ring, 1: XenStore's), moves a frame and finds its entries
 * again, and checks the refusals (a frame beyond the limit, status frames, version 2). */
#include "kit/xen.h"

#define GNTTABOP_setup_table 2
#define GNTTABOP_query_size 6
#define GNTTABOP_set_version 8
#define GNTTABOP_get_version 10
#define XENMAPIDX_grant_table_status 0x80000000u
#define GTF_permit_access 1
#define XEN_EOPNOTSUPP 95

struct grant_entry {
  uint16_t flags, domid;
  uint32_t frame;
};

static uint8_t table[3][4096] __attribute__((aligned(4096)));

static long map_frame(uint32_t index, void *page) { return xen_gnttab_map_frame(index, page); }

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_init()) {
    kit_printf("no Xen here\n");
    return 2;
  }
  struct {
    uint16_t dom;
    uint32_t nr_frames, max_nr_frames;
    int16_t status;
  } size = {DOMID_SELF, 0, 0, 0};
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_query_size, (uint64_t)(uintptr_t)&size, 1, 0, 0) == 0);
  kit_printf("grant table: %u of at most %u frames\n", size.nr_frames, size.max_nr_frames);
  KIT_CHECK(size.status == 0 && size.max_nr_frames == 64);

  memset(table, 0xaa, sizeof(table));
  KIT_CHECK(map_frame(0, table[0]) == 0);
  KIT_CHECK(map_frame(1, table[1]) == 0);
  struct grant_entry *entries = (struct grant_entry *)table[0];
  kit_printf("reserved entries: console frame %x, xenstore frame %x\n", entries[0].frame, entries[1].frame);
  KIT_CHECK(entries[0].flags == GTF_permit_access && entries[0].domid == 0 && entries[0].frame == 0xfeff8);
  KIT_CHECK(entries[1].flags == GTF_permit_access && entries[1].frame == 0xfeff9);
  KIT_CHECK(entries[2].flags == 0 && ((struct grant_entry *)table[1])[0].flags == 0);  /* the rest start empty */

  /* An entry of our own, then frame 1 moves to another page: the entry goes with it. */
  struct grant_entry *second = (struct grant_entry *)table[1];
  second[5] = (struct grant_entry){GTF_permit_access, 0, 0x1234};
  KIT_CHECK(map_frame(1, table[2]) == 0);
  KIT_CHECK(((struct grant_entry *)table[2])[5].frame == 0x1234);

  struct {
    uint16_t dom;
    uint32_t nr_frames;
    int16_t status;
    uint64_t *frame_list;
  } setup;
  uint64_t frames[2] = {0, 0};
  setup.dom = DOMID_SELF;
  setup.nr_frames = 2;
  setup.status = 1;
  setup.frame_list = frames;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_setup_table, (uint64_t)(uintptr_t)&setup, 1, 0, 0) == 0);
  KIT_CHECK(setup.status == 0);
  KIT_CHECK(frames[0] == (uint64_t)(uintptr_t)table[0] >> 12 && frames[1] == (uint64_t)(uintptr_t)table[2] >> 12);

  /* Refusals. */
  KIT_CHECK(map_frame(64, table[1]) == -XEN_EINVAL);
  KIT_CHECK(map_frame(0 | XENMAPIDX_grant_table_status, table[1]) == -XEN_EINVAL);
  uint32_t version = 2;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_set_version, (uint64_t)(uintptr_t)&version, 1, 0, 0) ==
            -XEN_EOPNOTSUPP);
  KIT_CHECK(version == 1);
  struct {
    uint16_t dom;
    uint32_t version;
  } get = {DOMID_SELF, 0};
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_get_version, (uint64_t)(uintptr_t)&get, 1, 0, 0) == 0);
  KIT_CHECK(get.version == 1);
  size.nr_frames = 0;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_query_size, (uint64_t)(uintptr_t)&size, 1, 0, 0) == 0);
  kit_printf("grant table now %u frames\n", size.nr_frames);
  KIT_CHECK(size.nr_frames == 2);
  return 0;
}
