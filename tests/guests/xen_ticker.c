/* The ticker guest: a long-running Xen guest for control-plane tests. It binds VIRQ_TIMER, runs a
 * 10 ms periodic timer, says it is up through console_io (the hypervisor log), and prints "tick N"
 * on its console every 10 ticks; with "ticks=N" on its
 * command line it powers off (SCHEDOP_shutdown) after N ticks, else it runs until stopped. */
#include "kit/xen.h"

#define UPCALL_VECTOR 0xf0

static volatile uint32_t ticks;

static void on_tick(uint32_t port) {
  (void)port;
  ticks++;
}

static uint32_t number_after(const char *cmdline, const char *key) {
  size_t n = kit_strlen(key);
  for (const char *p = cmdline; *p; p++) {
    if ((p == cmdline || p[-1] == ' ') && kit_memcmp(p, key, n) == 0) {
      uint32_t value = 0;
      for (p += n; *p >= '0' && *p <= '9'; p++) value = value * 10 + (uint32_t)(*p - '0');
      return value;
    }
  }
  return 0;
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  uint32_t limit = number_after(cmdline, "ticks=");
  if (!xen_init()) return 2;
  KIT_CHECK(xen_map_shared_info() == 0);
  KIT_CHECK(xen_enable_upcalls(0, UPCALL_VECTOR) == 0);
  uint32_t port = 0;
  KIT_CHECK(xen_evtchn_bind_virq(0 /* VIRQ_TIMER */, 0, &port) == 0);
  xen_set_event_handler(port, on_tick);
  uint64_t period = 10000000;
  KIT_CHECK(xen_hypercall(XEN_vcpu_op, 6 /* VCPUOP_set_periodic_timer */, 0, (uint64_t)(uintptr_t)&period, 0, 0) == 0);
  if (kit_failures()) return 1;
  xen_console_write("ticker: up (console_io)\n"); /* the hypervisor log (xl dmesg) */
  kit_printf("ticker: VIRQ_TIMER on port %u, every 10 ms\n", port);
  uint32_t printed = 0;
  for (;;) {
    kit_wait_for_interrupt();
    uint32_t now = ticks;
    if (now / 10 != printed / 10) {
      kit_printf("tick %u\n", now);
      printed = now;
    }
    if (limit && now >= limit) {
      kit_printf("ticker: %u ticks, powering off\n", now);
      xen_shutdown(0);
    }
  }
}
