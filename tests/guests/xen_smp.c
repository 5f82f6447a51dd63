/* The Xen SMP guest: starts vCPU 1 with VCPUOP_initialise/VCPUOP_up, sends it IPIs through an
 * event channel bound with EVTCHNOP_bind_ipi, moves a loopback port to it with EVTCHNOP_bind_vcpu,
 * and checks each event is handled on vCPU 1. */
#include "kit/xen.h"

#define UPCALL_VECTOR 0xf0

static volatile uint32_t ap_ready;
static volatile uint32_t handled_on[2];
static volatile uint32_t wrong_vcpu;
static uint8_t ap_stack[16384] __attribute__((aligned(16)));

static void on_event_for_vcpu1(uint32_t port) {
  (void)port;
  uint32_t me = xen_my_vcpu();
  if (me != 1) wrong_vcpu++;
  handled_on[me & 1]++;
}

static void ap_main(uint32_t vcpu) {
  if (xen_enable_upcalls(vcpu, UPCALL_VECTOR) != 0) wrong_vcpu += 100;
  __atomic_store_n(&ap_ready, 1, __ATOMIC_SEQ_CST);
  for (;;) kit_wait_for_interrupt();
}

static bool wait_handled(uint32_t count) {
  for (long spins = 0; spins < 200000000 && handled_on[1] < count; spins++) __asm__ volatile("pause");
  return handled_on[1] >= count;
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  if (!xen_init()) return 2;
  KIT_CHECK(xen_map_shared_info() == 0);
  KIT_CHECK(xen_enable_upcalls(0, UPCALL_VECTOR) == 0);
  KIT_CHECK(xen_hypercall(XEN_vcpu_op, 3 /* VCPUOP_is_up */, 1, 0, 0, 0) == 0);
  long up = xen_hypercall(XEN_vcpu_op, 1 /* VCPUOP_up */, 1, 0, 0, 0);
  if (up != -XEN_EINVAL) kit_printf("VCPUOP_up before initialise: %ld\n", up);
  KIT_CHECK(up == -XEN_EINVAL); /* not initialised */
  uint32_t ipi = 0;
  KIT_CHECK(xen_evtchn_bind_ipi(1, &ipi) == 0);
  xen_set_event_handler(ipi, on_event_for_vcpu1);
  KIT_CHECK(xen_start_vcpu(1, ap_main, ap_stack + sizeof ap_stack) == 0);
  for (long spins = 0; spins < 200000000 && !ap_ready; spins++) __asm__ volatile("pause");
  KIT_CHECK(ap_ready);
  KIT_CHECK(xen_hypercall(XEN_vcpu_op, 3 /* VCPUOP_is_up */, 1, 0, 0, 0) == 1);
  kit_printf("vCPU 1 is up\n");

  for (uint32_t i = 1; i <= 3; i++) {
    KIT_CHECK(xen_evtchn_send(ipi) == 0);
    KIT_CHECK(wait_handled(i));
  }
  kit_printf("IPIs handled on vCPU 1: %u\n", handled_on[1]);

  /* A loopback pair whose receiving end moves to vCPU 1. */
  uint32_t a = 0, b = 0;
  KIT_CHECK(xen_evtchn_alloc_unbound(DOMID_SELF, &a) == 0);
  KIT_CHECK(xen_evtchn_bind_interdomain(DOMID_SELF, a, &b) == 0);
  KIT_CHECK(xen_evtchn_bind_vcpu(a, 1) == 0);
  KIT_CHECK(xen_evtchn_bind_vcpu(a, 7) == -XEN_ENOENT);
  xen_set_event_handler(a, on_event_for_vcpu1);
  KIT_CHECK(xen_evtchn_send(b) == 0);
  KIT_CHECK(wait_handled(4));
  struct xen_evtchn_status status;
  KIT_CHECK(xen_evtchn_status(a, &status) == 0 && status.vcpu == 1);
  KIT_CHECK(wrong_vcpu == 0);
  kit_printf("events handled on vCPU 1: %u, on vCPU 0: %u\n", handled_on[1], handled_on[0]);
  if (kit_failures()) return 1;
  kit_printf("PASS: SCHEDOP_shutdown reason 0\n");
  xen_shutdown(0);
  return 3;
}
