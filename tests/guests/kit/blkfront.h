/* The kit's blkfront: the blkif ring of the 64-bit ABI on one page, and the XenBus handshake as
 * Linux's blkfront does it (find device/vbd/<first>, wait for the backend's InitWait, grant the
 * ring, an event channel for domain 0, ring-ref/event-channel/protocol and Initialised in one
 * transaction, wait for Connected, read what the backend published). */
#ifndef XENKVM_TESTS_GUESTS_KIT_BLKFRONT_H_
#define XENKVM_TESTS_GUESTS_KIT_BLKFRONT_H_

#include "kit/xenbus.h"

#define BLKIF_OP_READ 0
#define BLKIF_OP_WRITE 1
#define BLKIF_OP_FLUSH 3
#define BLKIF_OP_DISCARD 5
#define BLKIF_RING_SLOTS 32

struct blkif_segment {
  uint32_t gref;
  uint8_t first_sect, last_sect, pad[2];
};
struct blkif_request {
  uint8_t operation, nr_segments;
  uint16_t handle;
  uint32_t pad;
  uint64_t id, sector;
  struct blkif_segment seg[11];
};
struct blkif_response {
  uint64_t id;
  uint8_t operation, pad;
  int16_t status;
  uint32_t pad2;
};
union blkif_slot {
  struct blkif_request request;
  struct blkif_response response;
};
struct blkif_ring {
  uint32_t req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pad[48];
  union blkif_slot slots[BLKIF_RING_SLOTS];
};

struct blkfront {
  char device[16];   /* the vbd's id under device/vbd */
  char backend[96];  /* the backend's path */
  char sectors[24], discard[8];
  bool read_only;
  uint32_t port;
  struct blkif_ring *ring;
  uint32_t request_producer, response_consumer;
};

/* Connects to the first vbd; `handler` gets its port's events. False (having said why) on failure.
 * `persistent`: offers feature-persistent, as Linux's blkfront does; the caller then keeps every
 * page it grants for requests granted (the backend may keep them mapped until it disconnects). */
bool blkfront_connect(struct blkfront *front, xen_event_handler handler, bool persistent);
/* One request at a time: puts it, notifies, waits for its response; the response's status. */
int16_t blkfront_submit(struct blkfront *front, const struct blkif_request *request);
/* For several in flight: puts a request (not yet visible). */
void blkfront_put(struct blkfront *front, const struct blkif_request *request);
/* Publishes what was put, notifying the backend only if it asked (req_event). */
void blkfront_push(struct blkfront *front);
/* Takes the next response, waiting (STI; HLT) for one; false after `spins` empty wake-ups. */
bool blkfront_take(struct blkfront *front, struct blkif_response *response, uint32_t spins);
/* A READ/WRITE of one segment. */
struct blkif_request blkfront_request(uint8_t op, uint64_t id, uint64_t sector, uint32_t gref, uint8_t first,
                                      uint8_t last);
/* Closing, then Closed once the backend followed. */
bool blkfront_close(struct blkfront *front);

#endif
