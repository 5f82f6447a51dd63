#include "xenstore.h"

#define RING_SIZE 1024
#define PAYLOAD_MAX 4096
#define QUEUED_EVENTS 8

struct header {
  uint32_t type, request_id, transaction, length;
};

static struct xs_ring *ring;
static uint32_t store_port;
static volatile uint32_t notifications;
static uint32_t next_request = 1;
static char error_name[32];
static char message[PAYLOAD_MAX + 1];
static struct {
  char path[256], token[64];
} events[QUEUED_EVENTS];
static uint32_t events_head, events_count;

static void on_store_event(uint32_t port) {
  (void)port;
  notifications++;
}

struct xs_ring *xs_ring_page(void) { return ring; }
uint32_t xs_port(void) { return store_port; }
const char *xs_error(void) { return error_name; }

bool xs_init(void) {
  uint64_t pfn = 0, port = 0;
  if (xen_hvm_get_param(1 /* HVM_PARAM_STORE_PFN */, &pfn) != 0 || pfn == 0 ||
      xen_hvm_get_param(2 /* HVM_PARAM_STORE_EVTCHN */, &port) != 0 || port == 0) {
    kit_printf("xenstore: the VMM gave no XenStore ring\n");
    return false;
  }
  ring = (struct xs_ring *)(uintptr_t)(pfn << 12);
  store_port = (uint32_t)port;
  xen_set_event_handler(store_port, on_store_event);
  return true;
}

/* Sleeps until the store's port fires, unless it fired since `seen` was read. */
static void wait_for_store(uint32_t seen) {
  kit_cli();
  if (notifications == seen) {
    kit_wait_for_interrupt();
  } else {
    kit_sti();
  }
}

static void send_bytes(const void *data, uint32_t length) {
  const char *bytes = data;
  while (length > 0) {
    uint32_t seen = notifications;
    uint32_t producer = ring->req_prod;
    uint32_t used = producer - __atomic_load_n(&ring->req_cons, __ATOMIC_ACQUIRE);
    if (used >= RING_SIZE) {
      xen_evtchn_send(store_port);
      wait_for_store(seen);
      continue;
    }
    uint32_t count = RING_SIZE - used < length ? RING_SIZE - used : length;
    for (uint32_t i = 0; i < count; i++) ring->req[(producer + i) % RING_SIZE] = bytes[i];
    __atomic_store_n(&ring->req_prod, producer + count, __ATOMIC_RELEASE);
    bytes += count;
    length -= count;
  }
  xen_evtchn_send(store_port);
}

static void receive_bytes(void *out, uint32_t length) {
  char *bytes = out;
  while (length > 0) {
    uint32_t seen = notifications;
    uint32_t consumer = ring->rsp_cons;
    uint32_t available = __atomic_load_n(&ring->rsp_prod, __ATOMIC_ACQUIRE) - consumer;
    if (available == 0) {
      wait_for_store(seen);
      continue;
    }
    uint32_t count = available < length ? available : length;
    for (uint32_t i = 0; i < count; i++) bytes[i] = ring->rsp[(consumer + i) % RING_SIZE];
    __atomic_store_n(&ring->rsp_cons, consumer + count, __ATOMIC_RELEASE);
    xen_evtchn_send(store_port);
    bytes += count;
    length -= count;
  }
}

static void copy_string(char *out, uint32_t size, const char *in, uint32_t length) {
  uint32_t n = length < size - 1 ? length : size - 1;
  memcpy(out, in, n);
  out[n] = '\0';
}

/* The next message off the ring, its payload in `message`. */
static struct header receive_message(void) {
  struct header header;
  receive_bytes(&header, sizeof(header));
  uint32_t length = header.length <= PAYLOAD_MAX ? header.length : PAYLOAD_MAX;
  receive_bytes(message, length);
  message[length] = '\0';
  return header;
}

/* Keeps the watch event in `message` for xs_wait_watch (dropped when the queue is full). */
static void queue_event(void) {
  if (events_count == QUEUED_EVENTS) return;
  uint32_t slot = (events_head + events_count++) % QUEUED_EVENTS;
  uint32_t path_length = kit_strlen(message);
  copy_string(events[slot].path, sizeof(events[slot].path), message, path_length);
  const char *token = message + path_length + 1;
  copy_string(events[slot].token, sizeof(events[slot].token), token, kit_strlen(token));
}

static struct header receive_reply(void) {
  for (;;) {
    struct header header = receive_message();
    if (header.type != XS_WATCH_EVENT) return header;
    queue_event();
  }
}

long xs_request(uint32_t type, uint32_t transaction, const void *payload, uint32_t length, char *reply, uint32_t size) {
  struct header header = {type, next_request++, transaction, length};
  send_bytes(&header, sizeof(header));
  send_bytes(payload, length);
  struct header answer = receive_reply();
  if (answer.request_id != header.request_id) {
    kit_snprintf(error_name, sizeof(error_name), "BAD-ID");
    return -1;
  }
  if (answer.type == XS_ERROR) {
    copy_string(error_name, sizeof(error_name), message, kit_strlen(message));
    return -1;
  }
  if (reply != 0 && size > 0) copy_string(reply, size, message, answer.length);
  return answer.length;
}

/* "a\0b\0" from two strings (b may be 0); returns the length, with or without b's NUL. */
static uint32_t pack(char *out, const char *a, const char *b, bool terminate_b) {
  uint32_t n = kit_strlen(a) + 1;
  memcpy(out, a, n);
  if (b != 0) {
    uint32_t m = kit_strlen(b);
    memcpy(out + n, b, m);
    n += m;
    if (terminate_b) out[n++] = '\0';
  }
  return n;
}

static char request[PAYLOAD_MAX];

long xs_read(uint32_t transaction, const char *path, char *value, uint32_t size) {
  return xs_request(XS_READ, transaction, request, pack(request, path, 0, false), value, size);
}

long xs_write(uint32_t transaction, const char *path, const char *value) {
  long result = xs_request(XS_WRITE, transaction, request, pack(request, path, value, false), 0, 0);
  return result < 0 ? result : 0;
}

long xs_watch(const char *path, const char *token) {
  long result = xs_request(XS_WATCH, 0, request, pack(request, path, token, true), 0, 0);
  return result < 0 ? result : 0;
}

long xs_transaction_start(uint32_t *transaction) {
  char id[16];
  long result = xs_request(XS_TRANSACTION_START, 0, "", 1, id, sizeof(id));
  if (result < 0) return result;
  uint32_t value = 0;
  for (const char *p = id; *p >= '0' && *p <= '9'; p++) value = value * 10 + (uint32_t)(*p - '0');
  *transaction = value;
  return 0;
}

long xs_transaction_end(uint32_t transaction, bool commit) {
  long result = xs_request(XS_TRANSACTION_END, transaction, commit ? "T" : "F", 2, 0, 0);
  return result < 0 ? result : 0;
}

void xs_wait_watch(char *path, uint32_t path_size, char *token, uint32_t token_size) {
  while (events_count == 0) {
    if (receive_message().type == XS_WATCH_EVENT) queue_event();
  }
  copy_string(path, path_size, events[events_head].path, kit_strlen(events[events_head].path));
  copy_string(token, token_size, events[events_head].token, kit_strlen(events[events_head].token));
  events_head = (events_head + 1) % QUEUED_EVENTS;
  events_count--;
}
