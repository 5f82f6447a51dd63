/* The Xen core guest: detects Xen, fills the hypercall page, and exercises xen_version, console_io,
 * shared_info and vcpu_info, pvclock time, event channels (loopback, masking, VIRQ_TIMER, poll),
 * and the errors bad arguments earn; ends with SCHEDOP_shutdown of the reason its command line names
 * ("reason=poweroff|reboot|crash", default poweroff). */
#include "kit/xen.h"

#define UPCALL_VECTOR 0xf0

static volatile uint32_t events_seen[4096];

static void count_event(uint32_t port) { events_seen[port]++; }

static bool has_word(const char *cmdline, const char *word) {
  size_t n = kit_strlen(word);
  for (const char *p = cmdline; *p; p++) {
    if ((p == cmdline || p[-1] == ' ') && kit_memcmp(p, word, n) == 0 && (p[n] == ' ' || p[n] == '\0')) return true;
  }
  return false;
}


/* Waits (STI; HLT) until `port`'s handler ran `count` times, or `spins` wake-ups passed. */
static bool wait_for_event(uint32_t port, uint32_t count) {
  for (int spins = 0; spins < 100000 && events_seen[port] < count; spins++) {
    kit_wait_for_interrupt();
  }
  return events_seen[port] >= count;
}

static void version_and_console(void) {
  long version = xen_hypercall(XEN_xen_version, 0 /* XENVER_version */, 0, 0, 0, 0);
  kit_printf("Xen %ld.%ld (CPUID base %x, hypercall MSR %x)\n", version >> 16, version & 0xffff, xen.cpuid_base,
             xen.hypercall_msr);
  KIT_CHECK(version == (long)xen.version);
  char extra[16] = {0};
  KIT_CHECK(xen_hypercall(XEN_xen_version, 1 /* XENVER_extraversion */, (uint64_t)(uintptr_t)extra, 0, 0, 0) == 0);
  char capabilities[1024] = {0};
  KIT_CHECK(xen_hypercall(XEN_xen_version, 3, (uint64_t)(uintptr_t)capabilities, 0, 0, 0) == 0);
  kit_printf("extraversion \"%s\", capabilities \"%s\"\n", extra, capabilities);
  struct {
    uint32_t index, submap;
  } features = {0, 0};
  KIT_CHECK(xen_hypercall(XEN_xen_version, 6 /* XENVER_get_features */, (uint64_t)(uintptr_t)&features, 0, 0, 0) == 0);
  KIT_CHECK(features.submap & (1u << 8)); /* hvm_callback_vector */
  KIT_CHECK(xen_hypercall(XEN_xen_version, 7 /* XENVER_pagesize */, 0, 0, 0, 0) == 4096);
  KIT_CHECK(xen_console_write("console_io: hello from the guest\n") == 0);
}

static void shared_info_and_time(void) {
  KIT_CHECK(xen_map_shared_info() == 0);
  struct shared_info *s = xen.shared_info;
  KIT_CHECK((s->wc_version & 1) == 0);
  KIT_CHECK(s->wc_sec > 1600000000u); /* a real wallclock */
  KIT_CHECK(xen_register_vcpu_info(0) == 0);
  KIT_CHECK(xen_register_vcpu_info(0) == -XEN_EINVAL); /* once only */
  uint64_t t1 = xen_system_time(0);
  for (volatile int i = 0; i < 100000; i++) {
  }
  uint64_t t2 = xen_system_time(0);
  kit_printf("system time %llu ns, then %llu ns\n", (unsigned long long)t1, (unsigned long long)t2);
  KIT_CHECK(t2 > t1);
}

/* How upcalls arrive: the per-vCPU upcall vector (default), "callback=vector" (the HVM-wide
 * callback vector) or "callback=gsi" (IOAPIC pin 9, level-triggered). */
static void route_upcalls(const char *cmdline) {
  if (has_word(cmdline, "callback=gsi")) {
    KIT_CHECK(xen_set_callback_gsi(9, UPCALL_VECTOR) == 0);
    kit_printf("upcalls by GSI 9\n");
  } else if (has_word(cmdline, "callback=vector")) {
    KIT_CHECK(xen_set_callback_vector(UPCALL_VECTOR) == 0);
    kit_printf("upcalls by the callback vector\n");
  } else {
    KIT_CHECK(xen_enable_upcalls(0, UPCALL_VECTOR) == 0);
    kit_printf("upcalls by the per-vCPU upcall vector\n");
  }
}

static void loopback_and_masking(void) {
  uint32_t a = 0, b = 0;
  KIT_CHECK(xen_evtchn_alloc_unbound(DOMID_SELF, &a) == 0);
  KIT_CHECK(xen_evtchn_bind_interdomain(DOMID_SELF, a, &b) == 0);
  kit_printf("loopback ports %u <-> %u\n", a, b);
  xen_set_event_handler(a, count_event);
  xen_set_event_handler(b, count_event);
  kit_sti();
  KIT_CHECK(xen_evtchn_send(b) == 0);
  KIT_CHECK(wait_for_event(a, 1));
  struct xen_evtchn_status status;
  KIT_CHECK(xen_evtchn_status(b, &status) == 0);
  KIT_CHECK(status.status == 2 /* interdomain */ && status.target == a);

  /* A masked port keeps its event pending and raises nothing until unmasked. */
  xen_mask(a);
  uint64_t upcalls = xen_upcalls_taken();
  KIT_CHECK(xen_evtchn_send(b) == 0);
  for (volatile int i = 0; i < 100000; i++) {
  }
  KIT_CHECK(events_seen[a] == 1);
  KIT_CHECK(xen_pending(a));
  KIT_CHECK(xen_upcalls_taken() == upcalls);
  KIT_CHECK(xen_evtchn_unmask(a) == 0);
  KIT_CHECK(wait_for_event(a, 2));
  kit_printf("loopback events delivered: %u (one while masked, delivered at unmask)\n", events_seen[a]);

  /* The other way round, then close: the peer becomes unbound again. */
  KIT_CHECK(xen_evtchn_send(a) == 0);
  KIT_CHECK(wait_for_event(b, 1));
  KIT_CHECK(xen_evtchn_close(b) == 0);
  KIT_CHECK(xen_evtchn_status(a, &status) == 0 && status.status == 1 /* unbound */);
  KIT_CHECK(xen_evtchn_send(b) == -XEN_EINVAL); /* closed */
}

static void timer_and_poll(void) {
  uint32_t timer = 0;
  KIT_CHECK(xen_evtchn_bind_virq(0 /* VIRQ_TIMER */, 0, &timer) == 0);
  uint32_t again = 0;
  KIT_CHECK(xen_evtchn_bind_virq(0, 0, &again) == -XEN_EEXIST);
  events_seen[timer] = 0; /* the number may be a closed port's */
  xen_set_event_handler(timer, count_event);
  uint64_t start = xen_system_time(0);
  KIT_CHECK(xen_set_singleshot_timer(0, start + 10000000, true) == 0);
  KIT_CHECK(wait_for_event(timer, 1));
  uint64_t elapsed = xen_system_time(0) - start;
  kit_printf("VIRQ_TIMER after %llu us\n", (unsigned long long)(elapsed / 1000));
  KIT_CHECK(elapsed >= 10000000);
  KIT_CHECK(xen_set_singleshot_timer(0, 1, true) == -XEN_ETIME); /* in the past */

  /* SCHEDOP_poll: times out on a quiet port, wakes on the timer's (masked, so no upcall). */
  uint32_t quiet = 0;
  KIT_CHECK(xen_evtchn_alloc_unbound(DOMID_SELF, &quiet) == 0);
  start = xen_system_time(0);
  KIT_CHECK(xen_sched_poll(&quiet, 1, start + 5000000) == 0);
  KIT_CHECK(xen_system_time(0) - start >= 5000000);
  xen_mask(timer);
  start = xen_system_time(0);
  KIT_CHECK(xen_set_singleshot_timer(0, start + 5000000, false) == 0);
  KIT_CHECK(xen_sched_poll(&timer, 1, start + 5000000000ull) == 0);
  elapsed = xen_system_time(0) - start;
  kit_printf("SCHEDOP_poll woken by the timer after %llu us\n", (unsigned long long)(elapsed / 1000));
  KIT_CHECK(xen_pending(timer));
  KIT_CHECK(elapsed >= 5000000 && elapsed < 4000000000ull);
  xen_clear_pending(timer);
  KIT_CHECK(xen_evtchn_unmask(timer) == 0);

  /* ... and early, as Xen's does, for an event the vCPU can take now (interrupts on): the quiet
   * port's poll ends with the timer's upcall, not at its 5 s timeout (a vCPU polling its
   * spinlock's port must still answer the lock holder's IPIs). */
  /* The timer is 100 ms away: it must not fire before the poll begins (its upcall would then be
   * taken first and the poll would wait out its timeout), even on a loaded host. */
  events_seen[timer] = 0;
  start = xen_system_time(0);
  KIT_CHECK(xen_set_singleshot_timer(0, start + 100000000, false) == 0);
  KIT_CHECK(xen_sched_poll(&quiet, 1, start + 5000000000ull) == 0);
  elapsed = xen_system_time(0) - start;
  kit_printf("SCHEDOP_poll of a quiet port ended by an upcall after %llu us\n", (unsigned long long)(elapsed / 1000));
  KIT_CHECK(elapsed >= 100000000 && elapsed < 2000000000ull);
  KIT_CHECK(wait_for_event(timer, 1));
}

static void hostile_arguments(void) {
  KIT_CHECK(xen_evtchn_send(0) == -XEN_EINVAL);
  KIT_CHECK(xen_evtchn_send(4096) == -XEN_EINVAL);
  KIT_CHECK(xen_evtchn_send(100000) == -XEN_EINVAL);
  KIT_CHECK(xen_evtchn_close(4000) == -XEN_EINVAL); /* never opened */
  uint32_t ipi = 0, virq_port = 0;
  KIT_CHECK(xen_evtchn_bind_ipi(0, &ipi) == 0);
  KIT_CHECK(xen_evtchn_bind_vcpu(ipi, 0) == -XEN_EINVAL);     /* IPIs stay on their vCPU */
  KIT_CHECK(xen_evtchn_bind_virq(2, 1, &virq_port) == -XEN_ENOENT); /* no vCPU 1 here */
  KIT_CHECK(xen_evtchn_bind_virq(99, 0, &virq_port) == -XEN_EINVAL);
  KIT_CHECK(xen_evtchn_bind_interdomain(DOMID_SELF, ipi, &virq_port) == -XEN_EINVAL); /* not unbound */
  /* Pointers to nowhere, vcpu_info outside RAM or across a page, grant frames beyond the limit. */
  KIT_CHECK(xen_hypercall(XEN_event_channel_op, 4, 0x7fff00000000ull, 0, 0, 0) == -XEN_EFAULT);
  struct {
    uint64_t mfn;
    uint32_t offset, reserved;
  } info = {0xd0000, 0, 0};
  KIT_CHECK(xen_hypercall(XEN_vcpu_op, 10, 0, (uint64_t)(uintptr_t)&info, 0, 0) == -XEN_EINVAL);
  info.mfn = 0x200;
  info.offset = 4090;
  KIT_CHECK(xen_hypercall(XEN_vcpu_op, 10, 0, (uint64_t)(uintptr_t)&info, 0, 0) == -XEN_EINVAL);
  struct {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add = {DOMID_SELF, 0, 1 /* grant_table */, 64, 0x300};
  KIT_CHECK(xen_hypercall(XEN_memory_op, 7, (uint64_t)(uintptr_t)&add, 0, 0, 0) == -XEN_EINVAL);
  KIT_CHECK(xen_hypercall(60, 0, 0, 0, 0, 0) == -XEN_ENOSYS);
  /* Exhaust the ports: ENOSPC, then give them back. */
  static uint32_t taken[4096];
  uint32_t count = 0;
  long rc;
  while ((rc = xen_evtchn_alloc_unbound(DOMID_SELF, &taken[count])) == 0) count++;
  KIT_CHECK(rc == -XEN_ENOSPC);
  kit_printf("ports exhausted after %u more: %ld\n", count, rc);
  for (uint32_t i = 0; i < count; i++) KIT_CHECK(xen_evtchn_close(taken[i]) == 0);
}

int guest_main(const struct hvm_start_info *start_info) {
  const char *cmdline = (const char *)(uintptr_t)start_info->cmdline_paddr;
  if (!xen_init()) {
    kit_printf("no Xen here\n");
    return 2;
  }
  version_and_console();
  shared_info_and_time();
  route_upcalls(cmdline);
  loopback_and_masking();
  timer_and_poll();
  hostile_arguments();
  if (kit_failures()) return 1;
  uint32_t reason = 0;
  if (has_word(cmdline, "reason=reboot")) reason = 1;
  if (has_word(cmdline, "reason=crash")) reason = 3;
  kit_printf("PASS: SCHEDOP_shutdown reason %u\n", reason);
  xen_shutdown(reason);
  kit_printf("still running after SCHEDOP_shutdown\n");
  return 3;
}
