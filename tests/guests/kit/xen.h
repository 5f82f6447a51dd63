/* The kit's Xen side: detection, the hypercall page, shared_info and vcpu_info, event channels with
 * an upcall handler, pvclock time, and wrappers for the hypercalls the tests use (64-bit ABI). */
#ifndef XENKVM_TESTS_GUESTS_KIT_XEN_H_
#define XENKVM_TESTS_GUESTS_KIT_XEN_H_

#include "kit.h"

/* Hypercall numbers. */
#define XEN_set_timer_op 15
#define XEN_memory_op 12
#define XEN_xen_version 17
#define XEN_console_io 18
#define XEN_grant_table_op 20
#define XEN_vcpu_op 24
#define XEN_sched_op 29
#define XEN_event_channel_op 32
#define XEN_hvm_op 34

/* Error numbers (negative results). */
#define XEN_EPERM 1
#define XEN_ENOENT 2
#define XEN_ESRCH 3
#define XEN_EFAULT 14
#define XEN_EEXIST 17
#define XEN_EINVAL 22
#define XEN_ENOSPC 28
#define XEN_ENOSYS 38
#define XEN_ETIME 62

#define DOMID_SELF 0x7ff0

struct vcpu_time_info {
  uint32_t version, pad0;
  uint64_t tsc_timestamp, system_time;
  uint32_t tsc_to_system_mul;
  int8_t tsc_shift;
  uint8_t flags, pad1[2];
};
struct vcpu_info {
  uint8_t evtchn_upcall_pending, evtchn_upcall_mask;
  uint8_t pad[6];
  uint64_t evtchn_pending_sel;
  uint64_t cr2, arch_pad;
  struct vcpu_time_info time;
};
struct shared_info {
  struct vcpu_info vcpu_info[32];
  uint64_t evtchn_pending[64];
  uint64_t evtchn_mask[64];
  uint32_t wc_version, wc_sec, wc_nsec, wc_sec_hi;
};

struct xen {
  uint32_t cpuid_base;
  uint32_t version;
  uint32_t hypercall_msr;
  struct shared_info *shared_info;
  struct vcpu_info *vcpu_info[32]; /* where each vCPU's vcpu_info is */
};
extern struct xen xen;

/* Finds Xen's CPUID leaves and fills the hypercall page; false when not under Xen. */
bool xen_init(void);
/* The usual start of a guest that takes events: xen_init, shared_info mapped, vCPU 0's upcalls on
 * `vector`, interrupts on. False (having said why) when not under Xen or a step failed. */
bool xen_start_events(uint8_t vector);
/* Through the hypercall page. */
long xen_hypercall(unsigned number, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5);
/* Inline VMCALL, without the page (guests that skip it). */
long xen_vmcall(unsigned number, uint64_t a1, uint64_t a2, uint64_t a3);

/* This vCPU's Xen id (CPUID leaf base + 4, EBX). */
uint32_t xen_my_vcpu(void);

/* Maps shared_info at a page of the kit's (XENMEM_add_to_physmap). */
long xen_map_shared_info(void);
/* Moves `vcpu`'s vcpu_info to a page of the kit's (VCPUOP_register_vcpu_info). */
long xen_register_vcpu_info(uint32_t vcpu);

/* Event channels. Handlers run in the upcall (interrupts off). */
typedef void (*xen_event_handler)(uint32_t port);
/* Routes upcalls for `vcpu` to `vector` (HVMOP_set_evtchn_upcall_vector) and handles them. */
long xen_enable_upcalls(uint32_t vcpu, uint8_t vector);
/* Upcalls through IOAPIC pin `gsi` (HVM_PARAM_CALLBACK_IRQ, GSI type), level-triggered to `vector`. */
long xen_set_callback_gsi(uint32_t gsi, uint8_t vector);
/* HVMOP_get_param: the toolstack's parameters (HVM_PARAM_STORE_PFN 1, STORE_EVTCHN 2, CONSOLE_PFN 17, CONSOLE_EVTCHN 18). */
long xen_hvm_get_param(uint32_t index, uint64_t *value);
/* The HVM-wide callback vector (HVM_PARAM_CALLBACK_IRQ, vector type). */
long xen_set_callback_vector(uint8_t vector);
void xen_set_event_handler(uint32_t port, xen_event_handler handler);
uint64_t xen_upcalls_taken(void);
long xen_evtchn_alloc_unbound(uint16_t remote_domain, uint32_t *port);
long xen_evtchn_bind_interdomain(uint16_t remote_domain, uint32_t remote_port, uint32_t *local_port);
long xen_evtchn_bind_virq(uint32_t virq, uint32_t vcpu, uint32_t *port);
long xen_evtchn_bind_ipi(uint32_t vcpu, uint32_t *port);
long xen_evtchn_send(uint32_t port);
long xen_evtchn_close(uint32_t port);
long xen_evtchn_unmask(uint32_t port);
long xen_evtchn_bind_vcpu(uint32_t port, uint32_t vcpu);
struct xen_evtchn_status {
  uint32_t status, vcpu, target;
  uint16_t domain;
};
long xen_evtchn_status(uint32_t port, struct xen_evtchn_status *status);
static inline void xen_mask(uint32_t port) { __atomic_or_fetch(&xen.shared_info->evtchn_mask[port / 64], 1ull << (port % 64), __ATOMIC_SEQ_CST); }
static inline bool xen_pending(uint32_t port) { return (xen.shared_info->evtchn_pending[port / 64] >> (port % 64)) & 1; }
static inline void xen_clear_pending(uint32_t port) { __atomic_and_fetch(&xen.shared_info->evtchn_pending[port / 64], ~(1ull << (port % 64)), __ATOMIC_SEQ_CST); }

/* Grant tables v1: frame `index` of the table goes over `page`, a page of the guest's own
 * (XENMAPSPACE_grant_table, as Linux's PVH code does). */
long xen_gnttab_map_frame(uint32_t index, void *page);

/* Time: Xen system time (ns) from this vCPU's pvclock. */
uint64_t xen_system_time(uint32_t vcpu);
long xen_set_singleshot_timer(uint32_t vcpu, uint64_t deadline_ns, bool future_only);

/* Starts secondary vCPU `vcpu` (VCPUOP_initialise, 32-bit, then VCPUOP_up): it enters long mode on
 * the kit's page tables and calls `main` on `stack_top`. */
long xen_start_vcpu(uint32_t vcpu, void (*main)(uint32_t vcpu), void *stack_top);

/* sched_op. */
long xen_sched_poll(const uint32_t *ports, uint32_t count, uint64_t timeout_ns);
long xen_shutdown(uint32_t reason);

/* console_io write. */
long xen_console_write(const char *text);

#endif /* XENKVM_TESTS_GUESTS_KIT_XEN_H_ */
