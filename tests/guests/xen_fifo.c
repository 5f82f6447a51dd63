/* The FIFO event channel guest, as Linux's events_fifo.c uses the ABI: a control block for vCPU 0
 * (EVTCHNOP_init_control), one page of event words (EVTCHNOP_expand_array), an upcall handler
 * that consumes the queues by priority (READY, HEAD, clearing LINKED), then: three loopback
 * events sent with interrupts off arrive highest priority first and in order within a priority; a
 * masked event waits for EVTCHNOP_unmask; VIRQ_TIMER arrives through the queues; the hostile
 * arguments get Xen's errors; EVTCHNOP_reset goes back to 2-level. Upcalls come by the per-vCPU
 * vector, or with "callback=vector" on the command line by the HVM-wide callback vector, or with
 * "callback=gsi" by IOAPIC pin 9 (level-triggered, following upcall_pending). */
#include "kit/xen.h"

#define EVTCHNOP_reset 10
#define EVTCHNOP_init_control 11
#define EVTCHNOP_expand_array 12
#define EVTCHNOP_set_priority 13
#define EVTCHNOP_unmask 9
#define XEN_EOPNOTSUPP 95

#define PENDING (1u << 31)
#define MASKED (1u << 30)
#define LINKED (1u << 29)
#define BUSY (1u << 28)
#define LINK_MASK ((1u << 17) - 1)
#define UPCALL_VECTOR 0xf1

struct control_block {
  uint32_t ready, reserved;
  uint32_t head[16];
};

static struct control_block control __attribute__((aligned(4096)));
static uint32_t words[1024] __attribute__((aligned(4096)));
static uint32_t local_head[16];
static volatile uint32_t seen[16];
static volatile uint32_t seen_count;

static long evtchn(unsigned op, void *arg) {
  return xen_hypercall(XEN_event_channel_op, op, (uint64_t)(uintptr_t)arg, 0, 0, 0);
}

static long init_control(uint64_t gfn, uint32_t offset, uint32_t vcpu, uint8_t *link_bits) {
  struct {
    uint64_t control_gfn;
    uint32_t offset, vcpu;
    uint8_t link_bits, pad[7];
  } op = {gfn, offset, vcpu, 0, {0}};
  long rc = evtchn(EVTCHNOP_init_control, &op);
  if (link_bits) *link_bits = op.link_bits;
  return rc;
}

static long set_priority(uint32_t port, uint32_t priority) {
  struct {
    uint32_t port, priority;
  } op = {port, priority};
  return evtchn(EVTCHNOP_set_priority, &op);
}

/* Unlinks the head event of a queue; its LINK is the next one (0: the queue is empty). */
static uint32_t clear_linked(uint32_t *word) {
  uint32_t old = __atomic_load_n(word, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(word, &old, old & ~(LINKED | LINK_MASK), false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old & LINK_MASK;
}

static void consume_one(uint32_t priority, uint32_t *ready) {
  uint32_t head = local_head[priority];
  if (head == 0) head = __atomic_load_n(&control.head[priority], __ATOMIC_SEQ_CST);
  const uint32_t port = head;
  const uint32_t next = clear_linked(&words[port]);
  if (next == 0) *ready &= ~(1u << priority);
  const uint32_t word = __atomic_load_n(&words[port], __ATOMIC_SEQ_CST);
  if ((word & PENDING) && !(word & MASKED)) {
    __atomic_and_fetch(&words[port], ~PENDING, __ATOMIC_SEQ_CST);
    if (seen_count < 16) seen[seen_count] = port;
    seen_count++;
  }
  local_head[priority] = next;
}

static void fifo_upcall(uint32_t vector, struct kit_interrupt_frame *frame) {
  (void)vector;
  (void)frame;
  __atomic_store_n(&xen.vcpu_info[0]->evtchn_upcall_pending, 0, __ATOMIC_SEQ_CST);
  uint32_t ready = __atomic_exchange_n(&control.ready, 0, __ATOMIC_SEQ_CST);
  while (ready) {
    consume_one((uint32_t)__builtin_ctz(ready), &ready);
    if (ready == 0) ready = __atomic_exchange_n(&control.ready, 0, __ATOMIC_SEQ_CST);
  }
  kit_lapic_eoi();
}

static uint32_t loopback(uint32_t *sender) {
  uint32_t receiver = 0;
  KIT_CHECK(xen_evtchn_alloc_unbound(DOMID_SELF, &receiver) == 0);
  KIT_CHECK(xen_evtchn_bind_interdomain(DOMID_SELF, receiver, sender) == 0);
  return receiver;
}

static void wait_for(uint32_t count) {
  for (int i = 0; i < 1000 && seen_count < count; i++) kit_wait_for_interrupt();
}

static bool has_word(const char *text, const char *word) {
  const size_t n = kit_strlen(word);
  for (const char *p = text; *p; p++) {
    if ((p == text || p[-1] == ' ') && kit_memcmp(p, word, n) == 0 && (p[n] == 0 || p[n] == ' ')) return true;
  }
  return false;
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  if (!xen_init()) return 2;
  KIT_CHECK(xen_map_shared_info() == 0);
  if (has_word(cmdline, "callback=vector")) {
    KIT_CHECK(xen_set_callback_vector(UPCALL_VECTOR) == 0);
    kit_printf("fifo: upcalls by the HVM callback vector\n");
  } else if (has_word(cmdline, "callback=gsi")) {
    KIT_CHECK(xen_set_callback_gsi(9, UPCALL_VECTOR) == 0);
    kit_printf("fifo: upcalls by GSI 9\n");
  } else {
    struct {
      uint32_t vcpu;
      uint8_t vector, pad[3];
    } upcall_vector = {0, UPCALL_VECTOR, {0}};
    KIT_CHECK(xen_hypercall(XEN_hvm_op, 23 /* HVMOP_set_evtchn_upcall_vector */, (uint64_t)(uintptr_t)&upcall_vector, 0, 0, 0) == 0);
    kit_printf("fifo: upcalls by the per-vCPU vector\n");
  }
  kit_set_interrupt_handler(UPCALL_VECTOR, fifo_upcall);

  /* Hostile arguments first, then the real control block. */
  const uint64_t control_gfn = (uint64_t)(uintptr_t)&control >> 12;
  KIT_CHECK(evtchn(EVTCHNOP_expand_array, &(uint64_t){(uint64_t)(uintptr_t)words >> 12}) == -XEN_EOPNOTSUPP);
  KIT_CHECK(init_control(control_gfn, 4, 0, 0) == -XEN_EINVAL);
  KIT_CHECK(init_control(control_gfn, 4096 - 8, 0, 0) == -XEN_EINVAL);
  KIT_CHECK(init_control(0xfffffffffull, 0, 0, 0) == -XEN_EINVAL);
  KIT_CHECK(init_control(control_gfn, 0, 7, 0) == -XEN_ENOENT);
  uint8_t link_bits = 0;
  KIT_CHECK(init_control(control_gfn, 0, 0, &link_bits) == 0);
  KIT_CHECK(link_bits == 17);
  KIT_CHECK(init_control(control_gfn, 0, 0, 0) == -XEN_EINVAL); /* once per vCPU */
  KIT_CHECK(evtchn(EVTCHNOP_expand_array, &(uint64_t){(uint64_t)(uintptr_t)words >> 12}) == 0);
  kit_printf("fifo: control block and event words set up (%u link bits)\n", link_bits);

  uint32_t a1, a2, a3;
  const uint32_t b1 = loopback(&a1), b2 = loopback(&a2), b3 = loopback(&a3);
  KIT_CHECK(set_priority(b3, 0) == 0);
  KIT_CHECK(set_priority(b1, 16) == -XEN_EINVAL);
  kit_sti();
  wait_for(3); /* binding raised each new local port (a1, a2, a3), as Xen does */
  seen_count = 0;
  kit_cli();
  KIT_CHECK(xen_evtchn_send(a1) == 0 && xen_evtchn_send(a2) == 0 && xen_evtchn_send(a3) == 0);
  KIT_CHECK(control.ready == ((1u << 7) | 1u));
  kit_sti();
  wait_for(3);
  kit_printf("fifo: events arrived %u %u %u (sent to %u %u %u, %u first by priority)\n", seen[0], seen[1], seen[2], b1,
             b2, b3, b3);
  KIT_CHECK(seen_count == 3 && seen[0] == b3 && seen[1] == b1 && seen[2] == b2);

  /* Masked: pending, not linked, no upcall; the guest's unmask finds it pending and asks Xen. */
  seen_count = 0;
  __atomic_or_fetch(&words[b1], MASKED, __ATOMIC_SEQ_CST);
  KIT_CHECK(xen_evtchn_send(a1) == 0);
  KIT_CHECK((words[b1] & (PENDING | LINKED)) == PENDING && seen_count == 0);
  KIT_CHECK(xen_hypercall(XEN_event_channel_op, EVTCHNOP_unmask, (uint64_t)(uintptr_t)&b1, 0, 0, 0) == 0);
  wait_for(1);
  KIT_CHECK(seen_count == 1 && seen[0] == b1);
  kit_printf("fifo: a masked event arrived at its unmask\n");

  /* VIRQ_TIMER through the queues. */
  uint32_t timer = 0;
  KIT_CHECK(xen_evtchn_bind_virq(0 /* VIRQ_TIMER */, 0, &timer) == 0);
  seen_count = 0;
  KIT_CHECK(xen_set_singleshot_timer(0, xen_system_time(0) + 2000000, false) == 0);
  wait_for(1);
  KIT_CHECK(seen_count >= 1 && seen[0] == timer);
  kit_printf("fifo: VIRQ_TIMER on port %u arrived\n", timer);

  /* Back to 2-level: expand_array is refused again, and events set the shared_info bits. */
  struct {
    uint16_t dom;
  } reset = {DOMID_SELF};
  kit_cli();
  KIT_CHECK(evtchn(EVTCHNOP_reset, &reset) == 0);
  KIT_CHECK(evtchn(EVTCHNOP_expand_array, &(uint64_t){(uint64_t)(uintptr_t)words >> 12}) == -XEN_EOPNOTSUPP);
  uint32_t sender;
  const uint32_t receiver = loopback(&sender);
  xen_clear_pending(receiver);
  KIT_CHECK(xen_evtchn_send(sender) == 0);
  KIT_CHECK(xen_pending(receiver));
  kit_printf("fifo: reset to 2-level\n");
  return 0;
}
