#include "xen.h"

struct xen xen;

static uint8_t hypercall_page[4096] __attribute__((aligned(4096)));
static uint8_t shared_info_page[4096] __attribute__((aligned(4096)));
static struct vcpu_info registered_vcpu_info[32] __attribute__((aligned(64)));
static xen_event_handler event_handlers[4096];
static volatile uint64_t upcalls;

bool xen_init(void) {
  uint32_t regs[4];
  for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
    kit_cpuid(base, 0, regs);
    if (regs[1] == 0x566e6558 && regs[2] == 0x65584d4d && regs[3] == 0x4d4d566e && regs[0] - base >= 2) {
      xen.cpuid_base = base;
      break;
    }
  }
  if (!xen.cpuid_base) return false;
  kit_cpuid(xen.cpuid_base + 1, 0, regs);
  xen.version = regs[0];
  kit_cpuid(xen.cpuid_base + 2, 0, regs);
  xen.hypercall_msr = regs[1];
  kit_wrmsr(xen.hypercall_msr, (uint64_t)(uintptr_t)hypercall_page);
  return true;
}

long xen_hypercall(unsigned number, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5) {
  register uint64_t r10 __asm__("r10") = a4;
  register uint64_t r8 __asm__("r8") = a5;
  long result;
  void *stub = hypercall_page + number * 32;
  __asm__ volatile("call *%[stub]"
                   : "=a"(result), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                   : [stub] "r"(stub)
                   : "memory", "rcx", "r9", "r11");
  return result;
}

long xen_vmcall(unsigned number, uint64_t a1, uint64_t a2, uint64_t a3) {
  long result;
  __asm__ volatile("vmcall" : "=a"(result), "+D"(a1), "+S"(a2), "+d"(a3) : "a"((uint64_t)number) : "memory");
  return result;
}

long xen_map_shared_info(void) {
  struct {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add = {DOMID_SELF, 0, 0 /* XENMAPSPACE_shared_info */, 0, (uint64_t)(uintptr_t)shared_info_page >> 12};
  long rc = xen_hypercall(XEN_memory_op, 7 /* XENMEM_add_to_physmap */, (uint64_t)(uintptr_t)&add, 0, 0, 0);
  if (rc == 0) {
    xen.shared_info = (struct shared_info *)shared_info_page;
    for (int v = 0; v < 32; v++) {
      if (!xen.vcpu_info[v]) xen.vcpu_info[v] = &xen.shared_info->vcpu_info[v];
    }
  }
  return rc;
}

long xen_register_vcpu_info(uint32_t vcpu) {
  uint64_t address = (uint64_t)(uintptr_t)&registered_vcpu_info[vcpu];
  struct {
    uint64_t mfn;
    uint32_t offset, reserved;
  } info = {address >> 12, (uint32_t)(address & 0xfff), 0};
  long rc = xen_hypercall(XEN_vcpu_op, 10 /* VCPUOP_register_vcpu_info */, vcpu, (uint64_t)(uintptr_t)&info, 0, 0);
  if (rc == 0) xen.vcpu_info[vcpu] = &registered_vcpu_info[vcpu];
  return rc;
}

/* The upcall, on the vCPU that takes it: clear upcall_pending, then for each selected word, each pending unmasked port: clear
 * it and call its handler; again until nothing new arrived (Linux's loop). */
static void upcall(uint32_t vector, struct kit_interrupt_frame *frame) {
  (void)vector;
  (void)frame;
  __atomic_add_fetch(&upcalls, 1, __ATOMIC_SEQ_CST);
  struct vcpu_info *info = xen.vcpu_info[xen_my_vcpu()];
  if (info) {
    do {
      __atomic_store_n(&info->evtchn_upcall_pending, 0, __ATOMIC_SEQ_CST);
      uint64_t selector = __atomic_exchange_n(&info->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
      while (selector) {
        uint32_t word = (uint32_t)__builtin_ctzll(selector);
        selector &= selector - 1;
        uint64_t bits = xen.shared_info->evtchn_pending[word] & ~xen.shared_info->evtchn_mask[word];
        while (bits) {
          uint32_t port = word * 64 + (uint32_t)__builtin_ctzll(bits);
          bits &= bits - 1;
          xen_clear_pending(port);
          if (event_handlers[port]) event_handlers[port](port);
        }
      }
    } while (info->evtchn_upcall_pending);
  }
  kit_lapic_eoi();
}

uint32_t xen_my_vcpu(void) {
  uint32_t regs[4];
  kit_cpuid(xen.cpuid_base + 4, 0, regs);
  return regs[1];
}

long xen_enable_upcalls(uint32_t vcpu, uint8_t vector) {
  struct {
    uint32_t vcpu;
    uint8_t vector, pad[3];
  } op = {vcpu, vector, {0}};
  kit_set_interrupt_handler(vector, upcall);
  return xen_hypercall(XEN_hvm_op, 23 /* HVMOP_set_evtchn_upcall_vector */, (uint64_t)(uintptr_t)&op, 0, 0, 0);
}

long xen_set_callback_gsi(uint32_t gsi, uint8_t vector) {
  struct {
    uint16_t domid, pad;
    uint32_t index;
    uint64_t value;
  } param = {DOMID_SELF, 0, 0 /* HVM_PARAM_CALLBACK_IRQ */, gsi /* type 0: GSI */};
  kit_set_interrupt_handler(vector, upcall);
  kit_ioapic_route(gsi, vector, 0, true);
  return xen_hypercall(XEN_hvm_op, 0 /* HVMOP_set_param */, (uint64_t)(uintptr_t)&param, 0, 0, 0);
}

bool xen_start_events(uint8_t vector) {
  if (!xen_init()) {
    kit_printf("no Xen here\n");
    return false;
  }
  if (xen_map_shared_info() != 0 || xen_enable_upcalls(0, vector) != 0) {
    kit_printf("could not map shared_info or set the upcall vector\n");
    return false;
  }
  kit_sti();
  return true;
}

long xen_gnttab_map_frame(uint32_t index, void *page) {
  struct {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add = {DOMID_SELF, 0, 1 /* XENMAPSPACE_grant_table */, index, (uint64_t)(uintptr_t)page >> 12};
  return xen_hypercall(XEN_memory_op, 7 /* XENMEM_add_to_physmap */, (uint64_t)(uintptr_t)&add, 0, 0, 0);
}

long xen_hvm_get_param(uint32_t index, uint64_t *value) {
  struct {
    uint16_t domid, pad;
    uint32_t index;
    uint64_t value;
  } param = {DOMID_SELF, 0, index, 0};
  long result = xen_hypercall(XEN_hvm_op, 1 /* HVMOP_get_param */, (uint64_t)(uintptr_t)&param, 0, 0, 0);
  *value = param.value;
  return result;
}

long xen_set_callback_vector(uint8_t vector) {
  struct {
    uint16_t domid, pad;
    uint32_t index;
    uint64_t value;
  } param = {DOMID_SELF, 0, 0 /* HVM_PARAM_CALLBACK_IRQ */, (2ull << 56) | vector};
  kit_set_interrupt_handler(vector, upcall);
  return xen_hypercall(XEN_hvm_op, 0 /* HVMOP_set_param */, (uint64_t)(uintptr_t)&param, 0, 0, 0);
}

void xen_set_event_handler(uint32_t port, xen_event_handler handler) {
  if (port < 4096) event_handlers[port] = handler;
}

uint64_t xen_upcalls_taken(void) { return upcalls; }

static long evtchn_op(uint32_t command, void *arg) {
  return xen_hypercall(XEN_event_channel_op, command, (uint64_t)(uintptr_t)arg, 0, 0, 0);
}

long xen_evtchn_alloc_unbound(uint16_t remote_domain, uint32_t *port) {
  struct {
    uint16_t dom, remote_dom;
    uint32_t port;
  } op = {DOMID_SELF, remote_domain, 0};
  long rc = evtchn_op(6, &op);
  *port = op.port;
  return rc;
}

long xen_evtchn_bind_interdomain(uint16_t remote_domain, uint32_t remote_port, uint32_t *local_port) {
  struct {
    uint16_t remote_dom, pad;
    uint32_t remote_port, local_port;
  } op = {remote_domain, 0, remote_port, 0};
  long rc = evtchn_op(0, &op);
  *local_port = op.local_port;
  return rc;
}

long xen_evtchn_bind_virq(uint32_t virq, uint32_t vcpu, uint32_t *port) {
  struct {
    uint32_t virq, vcpu, port;
  } op = {virq, vcpu, 0};
  long rc = evtchn_op(1, &op);
  *port = op.port;
  return rc;
}

long xen_evtchn_bind_ipi(uint32_t vcpu, uint32_t *port) {
  struct {
    uint32_t vcpu, port;
  } op = {vcpu, 0};
  long rc = evtchn_op(7, &op);
  *port = op.port;
  return rc;
}

long xen_evtchn_send(uint32_t port) { return evtchn_op(4, &port); }
long xen_evtchn_close(uint32_t port) { return evtchn_op(3, &port); }
long xen_evtchn_unmask(uint32_t port) { return evtchn_op(9, &port); }

long xen_evtchn_bind_vcpu(uint32_t port, uint32_t vcpu) {
  struct {
    uint32_t port, vcpu;
  } op = {port, vcpu};
  return evtchn_op(8, &op);
}

long xen_evtchn_status(uint32_t port, struct xen_evtchn_status *status) {
  struct {
    uint16_t dom, pad;
    uint32_t port, status, vcpu;
    union {
      struct {
        uint16_t dom, pad;
        uint32_t port;
      } interdomain;
      uint16_t unbound_dom;
      uint32_t virq;
    } u;
  } op = {DOMID_SELF, 0, port, 0, 0, {{0, 0, 0}}};
  long rc = evtchn_op(5, &op);
  status->status = op.status;
  status->vcpu = op.vcpu;
  status->domain = op.u.interdomain.dom;
  status->target = op.status == 4 ? op.u.virq : op.u.interdomain.port;
  return rc;
}

uint64_t xen_system_time(uint32_t vcpu) {
  volatile struct vcpu_time_info *time = &xen.vcpu_info[vcpu]->time;
  for (;;) {
    uint32_t version = time->version;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t delta = kit_rdtsc() - time->tsc_timestamp;
    int8_t shift = time->tsc_shift;
    uint64_t system_time = time->system_time;
    uint32_t mul = time->tsc_to_system_mul;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if ((version & 1) || version != time->version) continue;
    if (shift < 0) {
      delta >>= -shift;
    } else {
      delta <<= shift;
    }
    return system_time + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
  }
}

long xen_set_singleshot_timer(uint32_t vcpu, uint64_t deadline_ns, bool future_only) {
  struct {
    uint64_t timeout_abs_ns;
    uint32_t flags, pad;
  } op = {deadline_ns, future_only ? 1u : 0u, 0};
  return xen_hypercall(XEN_vcpu_op, 8 /* VCPUOP_set_singleshot_timer */, vcpu, (uint64_t)(uintptr_t)&op, 0, 0);
}

long xen_sched_poll(const uint32_t *ports, uint32_t count, uint64_t timeout_ns) {
  struct {
    uint64_t ports;
    uint32_t count, pad;
    uint64_t timeout;
  } op = {(uint64_t)(uintptr_t)ports, count, 0, timeout_ns};
  return xen_hypercall(XEN_sched_op, 3 /* SCHEDOP_poll */, (uint64_t)(uintptr_t)&op, 0, 0, 0);
}

long xen_shutdown(uint32_t reason) {
  return xen_hypercall(XEN_sched_op, 2 /* SCHEDOP_shutdown */, (uint64_t)(uintptr_t)&reason, 0, 0, 0);
}

long xen_console_write(const char *text) {
  return xen_hypercall(XEN_console_io, 0 /* CONSOLEIO_write */, kit_strlen(text), (uint64_t)(uintptr_t)text, 0, 0);
}

/* ---- Secondary vCPUs */

extern char kit_ap_start32[];
void (*volatile kit_ap_main)(uint32_t vcpu);

long xen_start_vcpu(uint32_t vcpu, void (*main)(uint32_t vcpu), void *stack_top) {
  struct {
    uint32_t mode, pad;
    struct {
      uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi, eip, eflags, cr0, cr3, cr4, pad1;
      uint64_t efer;
      uint32_t cs_base, ds_base, ss_base, es_base, tr_base, cs_limit, ds_limit, ss_limit, es_limit, tr_limit;
      uint16_t cs_ar, ds_ar, ss_ar, es_ar, tr_ar, pad2[3];
    } regs;
  } context;
  memset(&context, 0, sizeof context);
  context.mode = 0; /* VCPU_HVM_MODE_32B */
  context.regs.eip = (uint32_t)(uintptr_t)kit_ap_start32;
  context.regs.esp = (uint32_t)(uintptr_t)stack_top;
  context.regs.ebx = vcpu;
  context.regs.eflags = 2;
  context.regs.cr0 = 0x11; /* PE, ET */
  context.regs.cs_limit = context.regs.ds_limit = context.regs.ss_limit = context.regs.es_limit = 0xffffffff;
  context.regs.cs_ar = 0xc9b;
  context.regs.ds_ar = context.regs.ss_ar = context.regs.es_ar = 0xc93;
  kit_ap_main = main;
  long rc = xen_hypercall(XEN_vcpu_op, 0 /* VCPUOP_initialise */, vcpu, (uint64_t)(uintptr_t)&context, 0, 0);
  if (rc) return rc;
  return xen_hypercall(XEN_vcpu_op, 1 /* VCPUOP_up */, vcpu, 0, 0, 0);
}
