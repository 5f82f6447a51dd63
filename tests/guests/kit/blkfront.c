#include "kit/blkfront.h"

static uint8_t ring_page[4096] __attribute__((aligned(4096)));

static bool write_node(uint32_t transaction, const struct blkfront *front, const char *key, const char *value) {
  char path[128];
  kit_snprintf(path, sizeof(path), "device/vbd/%s/%s", front->device, key);
  return xs_write(transaction, path, value) == 0;
}

static void read_backend(const struct blkfront *front, const char *key, char *value, uint32_t size) {
  char path[160];
  kit_snprintf(path, sizeof(path), "%s/%s", front->backend, key);
  xs_read(0, path, value, size);
}

bool blkfront_connect(struct blkfront *front, xen_event_handler handler, bool persistent) {
  char path[160], value[32];
  *front = (struct blkfront){0};
  front->ring = (struct blkif_ring *)ring_page;
  front->discard[0] = '0';
  if (xs_request(XS_DIRECTORY, 0, "device/vbd", 11, front->device, sizeof(front->device)) <= 0) {
    kit_printf("blkfront: no device under device/vbd\n");
    return false;
  }
  kit_snprintf(path, sizeof(path), "device/vbd/%s/backend", front->device);
  if (xs_read(0, path, front->backend, sizeof(front->backend)) <= 0) return false;
  kit_printf("xen-disk: device %s, backend %s\n", front->device, front->backend);
  kit_snprintf(path, sizeof(path), "%s/state", front->backend);
  if (!xenbus_wait_for(path, "2")) return false;

  /* SHARED_RING_INIT, a port for domain 0, and the handshake in one transaction. */
  front->ring->req_event = front->ring->rsp_event = 1;
  uint32_t ring_ref = xenbus_grant(ring_page, false);
  if (xen_evtchn_alloc_unbound(0, &front->port) != 0) return false;
  xen_set_event_handler(front->port, handler);
  uint32_t tx = 0;
  if (xs_transaction_start(&tx) != 0) return false;
  kit_snprintf(value, sizeof(value), "%u", ring_ref);
  bool written = write_node(tx, front, "ring-ref", value);
  kit_snprintf(value, sizeof(value), "%u", front->port);
  written = written && write_node(tx, front, "event-channel", value) && write_node(tx, front, "protocol", "x86_64-abi") &&
            write_node(tx, front, "feature-persistent", persistent ? "1" : "0") && write_node(tx, front, "state", "3");
  if (xs_transaction_end(tx, written) != 0 || !written) return false;
  kit_snprintf(path, sizeof(path), "%s/state", front->backend);
  if (!xenbus_wait_for(path, "4")) return false;
  char info[8] = "0";
  read_backend(front, "info", info, sizeof(info));
  front->read_only = kit_streq(info, "4"); /* VDISK_READONLY */
  read_backend(front, "sectors", front->sectors, sizeof(front->sectors));
  read_backend(front, "feature-discard", front->discard, sizeof(front->discard));
  return write_node(0, front, "state", "4");
}

void blkfront_put(struct blkfront *front, const struct blkif_request *request) {
  front->ring->slots[front->request_producer % BLKIF_RING_SLOTS].request = *request;
  front->request_producer++;
}

void blkfront_push(struct blkfront *front) {
  /* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY */
  const uint32_t old = __atomic_load_n(&front->ring->req_prod, __ATOMIC_RELAXED);
  __atomic_store_n(&front->ring->req_prod, front->request_producer, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint32_t event = __atomic_load_n(&front->ring->req_event, __ATOMIC_ACQUIRE);
  if ((uint32_t)(front->request_producer - event) < (uint32_t)(front->request_producer - old)) {
    xen_evtchn_send(front->port);
  }
}

bool blkfront_take(struct blkfront *front, struct blkif_response *response, uint32_t spins) {
  for (uint32_t i = 0;; i++) {
    kit_cli();
    if (__atomic_load_n(&front->ring->rsp_prod, __ATOMIC_ACQUIRE) != front->response_consumer) break;
    if (i == spins) {
      kit_sti();
      return false;
    }
    /* RING_FINAL_CHECK_FOR_RESPONSES: ask for an event at the next one, look once more. */
    __atomic_store_n(&front->ring->rsp_event, front->response_consumer + 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&front->ring->rsp_prod, __ATOMIC_ACQUIRE) != front->response_consumer) break;
    kit_wait_for_interrupt();
  }
  kit_sti();
  *response = front->ring->slots[front->response_consumer % BLKIF_RING_SLOTS].response;
  front->response_consumer++;
  return true;
}

int16_t blkfront_submit(struct blkfront *front, const struct blkif_request *request) {
  blkfront_put(front, request);
  __atomic_store_n(&front->ring->req_prod, front->request_producer, __ATOMIC_RELEASE);
  xen_evtchn_send(front->port);
  struct blkif_response response;
  if (!blkfront_take(front, &response, 100000)) {
    kit_printf("xen-disk: no response to request %llu\n", (unsigned long long)request->id);
    return 99;
  }
  KIT_CHECK(response.id == request->id);
  return response.status;
}

struct blkif_request blkfront_request(uint8_t op, uint64_t id, uint64_t sector, uint32_t gref, uint8_t first,
                                      uint8_t last) {
  struct blkif_request request = {0};
  request.operation = op;
  request.nr_segments = 1;
  request.id = id;
  request.sector = sector;
  request.seg[0] = (struct blkif_segment){gref, first, last, {0, 0}};
  return request;
}

bool blkfront_close(struct blkfront *front) {
  char path[160];
  if (!write_node(0, front, "state", "5")) return false;
  kit_snprintf(path, sizeof(path), "%s/state", front->backend);
  if (!xenbus_wait_for(path, "5")) return false;
  return write_node(0, front, "state", "6");
}
