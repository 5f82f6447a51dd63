#include "kit/xenbus.h"

struct grant_entry {
  uint16_t flags, domid;
  uint32_t frame;
};

static uint8_t grant_frame[4096] __attribute__((aligned(4096)));
static struct grant_entry *const grants = (struct grant_entry *)grant_frame;
static uint32_t next_ref = 8;

bool kit_streq(const char *a, const char *b) {
  return kit_strlen(a) == kit_strlen(b) && kit_memcmp(a, b, kit_strlen(a)) == 0;
}

bool xenbus_grants_init(void) {
  long error = xen_gnttab_map_frame(0, grant_frame);
  if (error != 0) kit_printf("xenbus: mapping grant-table frame 0 failed (%ld)\n", error);
  return error == 0;
}

uint32_t xenbus_grant(void *page, bool readonly) {
  uint32_t ref = next_ref++;
  grants[ref].domid = 0;
  grants[ref].frame = (uint32_t)((uintptr_t)page >> 12);
  __atomic_store_n(&grants[ref].flags, (uint16_t)(1 | (readonly ? 4 : 0)), __ATOMIC_RELEASE);
  return ref;
}

uint16_t xenbus_grant_flags(uint32_t ref) { return __atomic_load_n(&grants[ref].flags, __ATOMIC_ACQUIRE); }

bool xenbus_wait_for(const char *path, const char *want) {
  char value[32], event_path[128], token[16];
  if (xs_watch(path, path) != 0) KIT_CHECK(kit_streq(xs_error(), "EEXIST")); /* watching it already */
  for (int i = 0; i < 50; i++) {
    if (xs_read(0, path, value, sizeof(value)) >= 0 && kit_streq(value, want)) return true;
    xs_wait_watch(event_path, sizeof(event_path), token, sizeof(token));
  }
  return false;
}
