/* The grant-table guest: version 1 as Linux's PVH gnttab code uses it. It asks the table's size,
 * maps two frames over pages of its own RAM (XENMAPSPACE_grant_table), finds the toolstack's
 * reserved entries (0: the console ring, 1: XenStore's), moves a frame and finds its entries
 * again, and checks the refusals (a frame beyond the limit, status frames under version 1). Then
 * version 2: its layout (16-byte entries, the reserved ones rewritten), a status frame placed and
 * listed; GNTTABOP_copy between its own frames and through a grant it made to itself; back to 1. */
#include "kit/xen.h"

#define GNTTABOP_setup_table 2
#define GNTTABOP_query_size 6
#define GNTTABOP_set_version 8
#define GNTTABOP_get_version 10
#define XENMAPIDX_grant_table_status 0x80000000u
#define GTF_permit_access 1
#define XEN_EOPNOTSUPP 95
#define GNTTABOP_copy 5
#define GNTTABOP_get_status_frames 9
#define GNTCOPY_source_gref 1
#define GNTST_bad_copy_arg (-10)
#define GNTST_bad_domain (-2)

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
  uint32_t version = 3;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_set_version, (uint64_t)(uintptr_t)&version, 1, 0, 0) ==
            -XEN_EINVAL);
  KIT_CHECK(version == 1);
  struct {
    uint16_t dom;
    uint32_t version;
  } get = {DOMID_SELF, 0};
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_get_version, (uint64_t)(uintptr_t)&get, 1, 0, 0) == 0);
  KIT_CHECK(get.version == 1);

  /* Version 2: 16-byte entries, the reserved ones rewritten in place; a status frame. */
  version = 2;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_set_version, (uint64_t)(uintptr_t)&version, 1, 0, 0) == 0);
  KIT_CHECK(version == 2);
  struct grant_entry_v2 {
    uint16_t flags, domid;
    uint32_t pad;
    uint64_t frame;
  } *v2 = (struct grant_entry_v2 *)table[0];
  KIT_CHECK(v2[0].flags == GTF_permit_access && v2[0].frame == 0xfeff8 && v2[1].frame == 0xfeff9);
  static uint16_t status_frame[2048] __attribute__((aligned(4096)));
  KIT_CHECK(map_frame(0 | XENMAPIDX_grant_table_status, status_frame) == 0);
  struct {
    uint32_t nr_frames;
    uint16_t dom;
    int16_t status;
    uint64_t *frame_list;
  } status_frames = {1, DOMID_SELF, 1, frames};
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_get_status_frames, (uint64_t)(uintptr_t)&status_frames, 1, 0, 0) == 0);
  KIT_CHECK(status_frames.status == 0 && frames[0] == (uint64_t)(uintptr_t)status_frame >> 12);
  kit_printf("grant table version 2: status frame at %lx\n", (unsigned long)frames[0]);

  /* GNTTABOP_copy: frame to frame, then through entry 9, a grant of `source` to itself. */
  static uint8_t source[4096] __attribute__((aligned(4096))), destination[4096] __attribute__((aligned(4096)));
  memcpy(source + 100, "xenkvm grant copy", 18);
  struct copy_side {
    uint64_t u;
    uint16_t domid, offset;
    uint32_t pad;
  };
  struct {
    struct copy_side source, dest;
    uint16_t len, flags;
    int16_t status;
    uint16_t pad;
  } copy[3] = {
      {{(uint64_t)(uintptr_t)source >> 12, DOMID_SELF, 100, 0}, {(uint64_t)(uintptr_t)destination >> 12, DOMID_SELF, 8, 0}, 18, 0, 1, 0},
      {{9, DOMID_SELF, 100, 0}, {(uint64_t)(uintptr_t)destination >> 12, DOMID_SELF, 200, 0}, 18, GNTCOPY_source_gref, 1, 0},
      {{9, DOMID_SELF, 4090, 0}, {(uint64_t)(uintptr_t)destination >> 12, DOMID_SELF, 0, 0}, 18, GNTCOPY_source_gref, 1, 0},
  };
  v2[9] = (struct grant_entry_v2){GTF_permit_access, 1 /* this domain */, 0, (uint64_t)(uintptr_t)source >> 12};
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_copy, (uint64_t)(uintptr_t)copy, 3, 0, 0) == 0);
  KIT_CHECK(copy[0].status == 0 && kit_memcmp(destination + 8, "xenkvm grant copy", 18) == 0);
  KIT_CHECK(copy[1].status == 0 && kit_memcmp(destination + 200, "xenkvm grant copy", 18) == 0);
  KIT_CHECK(copy[2].status == GNTST_bad_copy_arg); /* crosses the page */
  KIT_CHECK(status_frame[9] == 0);                /* the copy's pin is gone */
  copy[0].source.domid = 0; /* domain 0's frame: not this guest's to name */
  copy[1].source.domid = 0; /* domain 0's grant table: none here */
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_copy, (uint64_t)(uintptr_t)copy, 2, 0, 0) == 0);
  KIT_CHECK(copy[0].status == -8 /* GNTST_permission_denied */ && copy[1].status == GNTST_bad_domain);
  kit_printf("grant copy: frame to frame and through a grant\n");

  version = 1;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_set_version, (uint64_t)(uintptr_t)&version, 1, 0, 0) == 0);
  KIT_CHECK(entries[0].flags == GTF_permit_access && entries[0].frame == 0xfeff8);  /* v1 layout again */
  KIT_CHECK(map_frame(0 | XENMAPIDX_grant_table_status, status_frame) == -XEN_EINVAL);
  size.nr_frames = 0;
  KIT_CHECK(xen_hypercall(XEN_grant_table_op, GNTTABOP_query_size, (uint64_t)(uintptr_t)&size, 1, 0, 0) == 0);
  kit_printf("grant table now %u frames\n", size.nr_frames);
  KIT_CHECK(size.nr_frames == 2);
  return 0;
}
