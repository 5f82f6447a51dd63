/* What the kit's PV frontends share: granting pages to domain 0 through grant-table frame 0 (v1
 * entries, mapped at a page of the kit's), and waiting for a XenStore node to read a value. */
#ifndef XENKVM_TESTS_GUESTS_KIT_XENBUS_H_
#define XENKVM_TESTS_GUESTS_KIT_XENBUS_H_

#include "kit/xenstore.h"

/* Exact string equality. */
bool kit_streq(const char *a, const char *b);

/* Maps grant-table frame 0 (XENMAPSPACE_grant_table); false (having said why) on failure. */
bool xenbus_grants_init(void);
/* gnttab_grant_foreign_access(domain 0) of the page at `page`: references from 8 up, flags
 * written last, as a frontend must. */
uint32_t xenbus_grant(void *page, bool readonly);
/* The entry's flags (GTF_reading/GTF_writing show a backend's mapping). */
uint16_t xenbus_grant_flags(uint32_t ref);

/* Waits (its watch wakes us) for `path` to read `want`; false after 50 changes without it. */
bool xenbus_wait_for(const char *path, const char *want);

#endif
