/* The xen-net guest: a small netfront that answers on 10.0.3.2. It finds its vif under
 * device/vif in XenStore, waits for the backend's InitWait, grants a tx and an rx ring page,
 * allocates an event channel for domain 0, publishes the rings, request-rx-copy and Connected in
 * a transaction, posts receive buffers once the backend is Connected, and then answers ARP
 * requests for its address, ICMP echo requests, and UDP datagrams to port 7 (echoed back). A
 * datagram "quit" is answered "bye", then the guest closes the device and powers off. */
#include "kit/xenbus.h"

#define UPCALL_VECTOR 0xf0
#define RING_SLOTS 256
#define RX_BUFFERS 16
#define NETTXF_more_data 4
#define NETRXF_more_data 4
#define ETH_HEADER 14

static const uint8_t kAddress[4] = {10, 0, 3, 2};

struct tx_request {
  uint32_t gref;
  uint16_t offset, flags, id, size;
};
struct tx_response {
  uint16_t id;
  int16_t status;
};
union tx_slot {
  struct tx_request request;
  struct tx_response response;
};
struct rx_request {
  uint16_t id, pad;
  uint32_t gref;
};
struct rx_response {
  uint16_t id, offset, flags;
  int16_t status;
};
union rx_slot {
  struct rx_request request;
  struct rx_response response;
};
struct tx_ring {
  uint32_t req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pad[48];
  union tx_slot slots[RING_SLOTS];
};
struct rx_ring {
  uint32_t req_prod, req_event, rsp_prod, rsp_event;
  uint8_t pad[48];
  union rx_slot slots[RING_SLOTS];
};
_Static_assert(sizeof(union tx_slot) == 12 && sizeof(union rx_slot) == 8, "netif slot sizes");
_Static_assert(sizeof(struct tx_ring) <= 4096 && sizeof(struct rx_ring) <= 4096, "one page per ring");


static uint8_t tx_page[4096] __attribute__((aligned(4096)));
static uint8_t rx_page[4096] __attribute__((aligned(4096)));
static uint8_t rx_buffers[RX_BUFFERS][4096] __attribute__((aligned(4096)));
static uint8_t out_frame[4096] __attribute__((aligned(4096)));
static struct tx_ring *tx = (struct tx_ring *)tx_page;
static struct rx_ring *rx = (struct rx_ring *)rx_page;
static uint32_t port, rx_grefs[RX_BUFFERS], out_gref;
static uint32_t tx_producer, tx_consumer, rx_producer, rx_consumer;
static uint8_t mac[6];
static volatile uint32_t events;

static void on_net_event(uint32_t p) {
  (void)p;
  events++;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool parse_mac(const char *text, uint8_t out[6]) {
  for (int i = 0; i < 6; i++) {
    int high = hex_digit(text[i * 3]), low = hex_digit(text[i * 3 + 1]);
    if (high < 0 || low < 0 || (i < 5 && text[i * 3 + 2] != ':')) return false;
    out[i] = (uint8_t)(high << 4 | low);
  }
  return true;
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put_be16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

/* The Internet checksum of `length` bytes. */
static uint16_t checksum(const uint8_t *p, size_t length) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < length; i += 2) sum += be16(p + i);
  if (length & 1) sum += (uint32_t)p[length - 1] << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

/* Waits for an event with interrupts off around the check, as blkfront's guest does. */
static void wait_until(volatile uint32_t *produced, uint32_t consumed) {
  for (;;) {
    kit_cli();
    if (__atomic_load_n(produced, __ATOMIC_ACQUIRE) != consumed) break;
    kit_wait_for_interrupt();
  }
  kit_sti();
}

/* Sends out_frame[0, length) in one slot and waits for its response. */
static bool transmit(uint16_t length) {
  struct tx_request *request = &tx->slots[tx_producer % RING_SLOTS].request;
  *request = (struct tx_request){out_gref, 0, 0, (uint16_t)tx_producer, length};
  __atomic_store_n(&tx->req_prod, ++tx_producer, __ATOMIC_RELEASE);
  xen_evtchn_send(port);
  wait_until(&tx->rsp_prod, tx_consumer);
  struct tx_response response = tx->slots[tx_consumer % RING_SLOTS].response;
  tx_consumer++;
  tx->rsp_event = tx_consumer + 1;
  return response.status == 0;
}

static void post_rx(uint16_t id) {
  rx->slots[rx_producer % RING_SLOTS].request = (struct rx_request){id, 0, rx_grefs[id]};
  __atomic_store_n(&rx->req_prod, ++rx_producer, __ATOMIC_RELEASE);
}

/* The Ethernet header of a reply to `frame`. */
static void reply_header(const uint8_t *frame, uint16_t ethertype) {
  memcpy(out_frame, frame + 6, 6);
  memcpy(out_frame + 6, mac, 6);
  put_be16(out_frame + 12, ethertype);
}

static void answer_arp(const uint8_t *frame, size_t length) {
  const uint8_t *arp = frame + ETH_HEADER;
  if (length < ETH_HEADER + 28 || be16(arp) != 1 || be16(arp + 2) != 0x0800 || be16(arp + 6) != 1) return;
  if (kit_memcmp(arp + 24, kAddress, 4) != 0) return;  /* not for us */
  reply_header(frame, 0x0806);
  uint8_t *reply = out_frame + ETH_HEADER;
  memcpy(reply, arp, 6);  /* hardware and protocol types and sizes */
  put_be16(reply + 6, 2);
  memcpy(reply + 8, mac, 6);
  memcpy(reply + 14, kAddress, 4);
  memcpy(reply + 18, arp + 8, 10);  /* the asker's MAC and address */
  KIT_CHECK(transmit(ETH_HEADER + 28));
  kit_printf("xen-net: answered ARP\n");
}

/* An IPv4 reply to `frame`'s packet with `payload_length` bytes of protocol payload already in
 * place after the IP header; the header is built here (addresses swapped). */
static void send_ipv4(const uint8_t *frame, uint8_t protocol, size_t payload_length) {
  const uint8_t *ip = frame + ETH_HEADER;
  uint8_t *reply = out_frame + ETH_HEADER;
  reply_header(frame, 0x0800);
  memset(reply, 0, 20);
  reply[0] = 0x45;
  put_be16(reply + 2, (uint16_t)(20 + payload_length));
  reply[8] = 64;
  reply[9] = protocol;
  memcpy(reply + 12, kAddress, 4);
  memcpy(reply + 16, ip + 12, 4);
  put_be16(reply + 10, checksum(reply, 20));
  KIT_CHECK(transmit((uint16_t)(ETH_HEADER + 20 + payload_length)));
}

/* Returns false once the host said "quit". */
static bool answer_ipv4(const uint8_t *frame, size_t length) {
  const uint8_t *ip = frame + ETH_HEADER;
  if (length < ETH_HEADER + 20 || (ip[0] >> 4) != 4 || kit_memcmp(ip + 16, kAddress, 4) != 0) return true;
  const size_t header = (ip[0] & 0xf) * 4u, total = be16(ip + 2);
  if (header < 20 || total < header || ETH_HEADER + total > length || total - header > 1400) return true;
  const uint8_t *payload = ip + header;
  const size_t payload_length = total - header;
  uint8_t *reply = out_frame + ETH_HEADER + 20;
  if (ip[9] == 1 && payload_length >= 8 && payload[0] == 8) {  /* ICMP echo request */
    memcpy(reply, payload, payload_length);
    reply[0] = 0;  /* echo reply */
    put_be16(reply + 2, 0);
    put_be16(reply + 2, checksum(reply, payload_length));
    send_ipv4(frame, 1, payload_length);
    kit_printf("xen-net: answered ping\n");
    return true;
  }
  if (ip[9] == 17 && payload_length >= 8 && be16(payload + 2) == 7) {  /* UDP echo */
    const size_t data_length = be16(payload + 4) >= 8 && be16(payload + 4) <= payload_length ? be16(payload + 4) - 8u : 0;
    const bool quit = data_length == 4 && kit_memcmp(payload + 8, "quit", 4) == 0;
    put_be16(reply, 7);
    put_be16(reply + 2, be16(payload));
    if (quit) {
      memcpy(reply + 8, "bye", 3);
    } else {
      memcpy(reply + 8, payload + 8, data_length);
    }
    const size_t reply_data = quit ? 3 : data_length;
    put_be16(reply + 4, (uint16_t)(8 + reply_data));
    put_be16(reply + 6, 0);  /* no checksum: allowed over IPv4 */
    send_ipv4(frame, 17, 8 + reply_data);
    kit_printf("xen-net: echoed %u UDP bytes\n", (unsigned)data_length);
    return !quit;
  }
  return true;
}

static bool handle(const uint8_t *frame, size_t length) {
  if (length < ETH_HEADER) return true;
  switch (be16(frame + 12)) {
    case 0x0806:
      answer_arp(frame, length);
      return true;
    case 0x0800:
      return answer_ipv4(frame, length);
    default:
      return true;
  }
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_start_events(UPCALL_VECTOR) || !xs_init()) return 2;
  KIT_CHECK(xenbus_grants_init());

  char devices[64], path[128], backend[96], value[64];
  KIT_CHECK(xs_request(XS_DIRECTORY, 0, "device/vif", 11, devices, sizeof(devices)) > 0);
  kit_snprintf(path, sizeof(path), "device/vif/%s/backend", devices);
  KIT_CHECK(xs_read(0, path, backend, sizeof(backend)) > 0);
  kit_snprintf(path, sizeof(path), "device/vif/%s/mac", devices);
  KIT_CHECK(xs_read(0, path, value, sizeof(value)) > 0 && parse_mac(value, mac));
  kit_printf("xen-net: vif %s, backend %s, mac %s\n", devices, backend, value);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(xenbus_wait_for(path, "2"));
  if (kit_failures()) return 1;

  tx->req_event = tx->rsp_event = 1;
  rx->req_event = rx->rsp_event = 1;
  const uint32_t tx_ref = xenbus_grant(tx_page, false), rx_ref = xenbus_grant(rx_page, false);
  for (int i = 0; i < RX_BUFFERS; i++) rx_grefs[i] = xenbus_grant(rx_buffers[i], false);
  out_gref = xenbus_grant(out_frame, true);
  KIT_CHECK(xen_evtchn_alloc_unbound(0, &port) == 0);
  xen_set_event_handler(port, on_net_event);
  const struct {
    const char *key;
    uint32_t number;
  } numbers[] = {{"tx-ring-ref", tx_ref}, {"rx-ring-ref", rx_ref}, {"event-channel", port},
                 {"request-rx-copy", 1},  {"feature-rx-notify", 1}, {"state", 4}};
  uint32_t transaction = 0;
  KIT_CHECK(xs_transaction_start(&transaction) == 0);
  for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
    kit_snprintf(path, sizeof(path), "device/vif/%s/%s", devices, numbers[i].key);
    kit_snprintf(value, sizeof(value), "%u", numbers[i].number);
    KIT_CHECK(xs_write(transaction, path, value) == 0);
  }
  KIT_CHECK(xs_transaction_end(transaction, true) == 0);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(xenbus_wait_for(path, "4"));
  if (kit_failures()) return 1;
  for (uint16_t id = 0; id < RX_BUFFERS; id++) post_rx(id);
  xen_evtchn_send(port);
  kit_printf("xen-net: ready at 10.0.3.2\n");

  bool running = true;
  while (running) {
    wait_until(&rx->rsp_prod, rx_consumer);
    while (running && rx_consumer != __atomic_load_n(&rx->rsp_prod, __ATOMIC_ACQUIRE)) {
      struct rx_response response = rx->slots[rx_consumer % RING_SLOTS].response;
      rx_consumer++;
      rx->rsp_event = rx_consumer + 1;
      if (response.id >= RX_BUFFERS) {
        kit_printf("xen-net: a response for buffer %u, which was never posted\n", response.id);
        return 1;
      }
      /* A frame spread over slots (more_data) is not expected on a 1500-byte MTU: dropped. */
      if (response.status > 0 && !(response.flags & NETRXF_more_data) && response.offset + response.status <= 4096) {
        running = handle(rx_buffers[response.id] + response.offset, (size_t)response.status);
      }
      post_rx(response.id);
      xen_evtchn_send(port);
    }
  }

  kit_snprintf(path, sizeof(path), "device/vif/%s/state", devices);
  KIT_CHECK(xs_write(0, path, "5") == 0);
  kit_snprintf(path, sizeof(path), "%s/state", backend);
  KIT_CHECK(xenbus_wait_for(path, "5"));
  kit_snprintf(path, sizeof(path), "device/vif/%s/state", devices);
  KIT_CHECK(xs_write(0, path, "6") == 0);
  KIT_CHECK(xenbus_grant_flags(rx_grefs[0]) == 1);  /* nothing of ours is still in use */
  kit_printf("xen-net: closed after %u events\n", (unsigned)events);
  return kit_failures() ? 1 : 0;
}
