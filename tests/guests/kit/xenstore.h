/* The kit's XenStore client: the guest side of the ring (xenstore_domain_interface) found through
 * HVM_PARAM_STORE_PFN / STORE_EVTCHN, as Linux's xenbus uses it. Requests block (STI; HLT) until
 * their reply; watch events that arrive meanwhile are queued for xs_wait_watch. Needs upcalls
 * enabled (xen_enable_upcalls or a callback) before xs_init. */
#ifndef XENKVM_TESTS_GUESTS_KIT_XENSTORE_H_
#define XENKVM_TESTS_GUESTS_KIT_XENSTORE_H_

#include "xen.h"

/* Message types (xs_wire.h). */
enum {
  XS_DIRECTORY = 1, XS_READ = 2, XS_GET_PERMS = 3, XS_WATCH = 4, XS_UNWATCH = 5, XS_TRANSACTION_START = 6,
  XS_TRANSACTION_END = 7, XS_GET_DOMAIN_PATH = 10, XS_WRITE = 11, XS_MKDIR = 12, XS_RM = 13, XS_SET_PERMS = 14,
  XS_WATCH_EVENT = 15, XS_ERROR = 16, XS_RESET_WATCHES = 21
};

struct xs_ring {
  char req[1024], rsp[1024];
  uint32_t req_cons, req_prod, rsp_cons, rsp_prod;
  uint32_t server_features, connection, error;
};

/* Finds the ring and its port; false (with a message) if the VMM gave none. */
bool xs_init(void);
struct xs_ring *xs_ring_page(void);
uint32_t xs_port(void);

/* One request: `payload` of `length` bytes; the reply's payload goes to `reply` (NUL-terminated,
 * truncated to `size`). Returns the reply's length, or -1 for an XS_ERROR reply (xs_error() names it). */
long xs_request(uint32_t type, uint32_t transaction, const void *payload, uint32_t length, char *reply, uint32_t size);
const char *xs_error(void);

/* Conveniences over xs_request; 0 / a length on success, -1 on XS_ERROR. */
long xs_read(uint32_t transaction, const char *path, char *value, uint32_t size);
long xs_write(uint32_t transaction, const char *path, const char *value);
long xs_watch(const char *path, const char *token);
long xs_transaction_start(uint32_t *transaction);
long xs_transaction_end(uint32_t transaction, bool commit);

/* Blocks until a watch event arrives (or takes a queued one). */
void xs_wait_watch(char *path, uint32_t path_size, char *token, uint32_t token_size);

#endif /* XENKVM_TESTS_GUESTS_KIT_XENSTORE_H_ */
