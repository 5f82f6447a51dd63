/* The balloon guest: as Linux's balloon driver, it gives 32 MiB of its RAM back to the host
 * (XENMEM_decrease_reservation, 2 MiB extents) and takes it again (XENMEM_populate_physmap),
 * checking current_reservation at each step and that the frames come back zeroed. Between the
 * steps it prints where it is and waits a second, so that the host test can read the VMM's
 * resident memory: touched, given back, refilled. */
#include "kit/xen.h"

#define XENMEM_increase_reservation 0
#define XENMEM_decrease_reservation 1
#define XENMEM_current_reservation 3
#define XENMEM_maximum_reservation 4
#define XENMEM_populate_physmap 6

#define BALLOON_BASE 0x4000000ull /* 64 MiB: above the kit, inside the 128 MiB the test gives */
#define BALLOON_PAGES 8192u        /* 32 MiB */
#define EXTENT_ORDER 9u            /* 2 MiB extents */
#define EXTENTS (BALLOON_PAGES >> EXTENT_ORDER)

struct memory_reservation {
  uint64_t extent_start;
  uint64_t nr_extents;
  uint32_t extent_order, mem_flags;
  uint16_t domid;
};

static uint64_t extents[EXTENTS];
static uint32_t idle_port;

static long reservation_op(unsigned op) {
  struct memory_reservation reservation = {(uint64_t)(uintptr_t)extents, EXTENTS, EXTENT_ORDER, 0, DOMID_SELF};
  return xen_hypercall(XEN_memory_op, op, (uint64_t)(uintptr_t)&reservation, 0, 0, 0);
}

static long pages_held(unsigned op) {
  uint16_t domid = DOMID_SELF;
  return xen_hypercall(XEN_memory_op, op, (uint64_t)(uintptr_t)&domid, 0, 0, 0);
}

static void touch_all(void) {
  for (uint32_t page = 0; page < BALLOON_PAGES; ++page) *(volatile uint8_t *)(uintptr_t)(BALLOON_BASE + page * 4096ull) = 1;
}

/* About a second, polling a port nobody raises. */
static void pause_for_the_host(void) {
  const uint64_t deadline = xen_system_time(0) + 1000000000ull;
  while (xen_system_time(0) < deadline) xen_sched_poll(&idle_port, 1, deadline);
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_init()) {
    kit_printf("no Xen here\n");
    return 2;
  }
  KIT_CHECK(xen_map_shared_info() == 0);
  KIT_CHECK(xen_evtchn_alloc_unbound(DOMID_SELF, &idle_port) == 0);
  const long held = pages_held(XENMEM_current_reservation);
  kit_printf("balloon: holding %ld pages of at most %ld\n", held, pages_held(XENMEM_maximum_reservation));
  KIT_CHECK(held > (long)BALLOON_PAGES && held <= pages_held(XENMEM_maximum_reservation));
  for (uint32_t i = 0; i < EXTENTS; ++i) extents[i] = (BALLOON_BASE >> 12) + ((uint64_t)i << EXTENT_ORDER);

  touch_all();
  kit_printf("balloon: touched 32 MiB\n");
  pause_for_the_host();

  KIT_CHECK(reservation_op(XENMEM_decrease_reservation) == EXTENTS);
  KIT_CHECK(pages_held(XENMEM_current_reservation) == held - (long)BALLOON_PAGES);
  KIT_CHECK(reservation_op(XENMEM_decrease_reservation) == 0); /* given back already */
  kit_printf("balloon: gave back 32 MiB\n");
  pause_for_the_host();
  KIT_CHECK(*(volatile uint8_t *)(uintptr_t)BALLOON_BASE == 0); /* a given-back frame reads zeros */

  KIT_CHECK(reservation_op(XENMEM_populate_physmap) == EXTENTS);
  KIT_CHECK(pages_held(XENMEM_current_reservation) == held);
  KIT_CHECK(*(volatile uint8_t *)(uintptr_t)(BALLOON_BASE + 4096 * 100) == 0); /* refilled: fresh */
  touch_all();
  kit_printf("balloon: refilled 32 MiB\n");
  pause_for_the_host();
  return 0;
}
