// KVM's Xen interface: the definitions Debian 12's linux/kvm.h (Linux 6.1) lacks, and checks that the
// ones it has match the kernel ABI. Later kernels only added flags and aliases at existing offsets,
// so the 6.1 structs are complete; the aliases are reached through the helpers here.
#ifndef XENKVM_COMPONENTS_KVM_XEN_ABI_H_
#define XENKVM_COMPONENTS_KVM_XEN_ABI_H_

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>

namespace xenkvm::kvm {

// KVM_CAP_XEN_HVM bits (Linux version that added each).
inline constexpr uint32_t kXenCapHypercallMsr = 1u << 0;        // 4.x: the ioctl exists
inline constexpr uint32_t kXenCapInterceptHcall = 1u << 1;      // 5.12
inline constexpr uint32_t kXenCapSharedInfo = 1u << 2;          // 5.12
inline constexpr uint32_t kXenCapRunstate = 1u << 3;            // 5.12
inline constexpr uint32_t kXenCapEvtchn2Level = 1u << 4;        // 5.17
inline constexpr uint32_t kXenCapEvtchnSend = 1u << 5;          // 5.19
inline constexpr uint32_t kXenCapRunstateUpdateFlag = 1u << 6;  // 6.2
inline constexpr uint32_t kXenCapPvclockTscUnstable = 1u << 7;  // 6.8
inline constexpr uint32_t kXenCapSharedInfoHva = 1u << 8;       // 6.9

// The only bits kvm_xen_hvm_config.flags may carry; any other bit makes the ioctl fail with EINVAL.
inline constexpr uint32_t kXenConfigFlagsAccepted =
    kXenCapInterceptHcall | kXenCapEvtchnSend | kXenCapPvclockTscUnstable;

// Attribute types added after 6.1.
inline constexpr uint16_t kXenAttrRunstateUpdateFlag = 0x5;  // 6.2, u.runstate_update_flag (u8)
inline constexpr uint16_t kXenAttrSharedInfoHva = 0x6;       // 6.9, u.shared_info.hva (u64)
inline constexpr uint16_t kXenVcpuAttrVcpuInfoHva = 0x9;     // 6.9, u.hva (u64)

// "No page" for SHARED_INFO (gfn) and the vCPU GPA attributes (6.2 names; earlier kernels accept it).
inline constexpr uint64_t kXenInvalidGfn = ~uint64_t{0};
inline constexpr uint64_t kXenInvalidGpa = ~uint64_t{0};

// The hypercall MSR range Linux 6.15 enforces (earlier kernels take any non-zero index).
inline constexpr uint32_t kXenHypercallMsrFirst = 0x40000000;
inline constexpr uint32_t kXenHypercallMsrLast = 0x4fffffff;
// Where Xen's MSR goes: the start of the range, or above Hyper-V's MSRs when those are exposed.
inline constexpr uint32_t kXenHypercallMsrDefault = 0x40000000;
inline constexpr uint32_t kXenHypercallMsrWithHyperV = 0x40000200;

// The Xen evtchn "type" values KVM's EVTCHN attribute takes (from Xen's event_channel.h).
inline constexpr uint32_t kEvtchnStatInterdomain = 2;
inline constexpr uint32_t kEvtchnStatIpi = 5;

// Layout of the structs this component passes to the kernel (checked again in layout_test.cc).
static_assert(sizeof(kvm_xen_hvm_config) == 56);
static_assert(offsetof(kvm_xen_hvm_config, msr) == 4);
static_assert(offsetof(kvm_xen_hvm_config, blob_addr_32) == 8);
static_assert(offsetof(kvm_xen_hvm_config, blob_size_64) == 25);
static_assert(sizeof(kvm_xen_hvm_attr) == 72);
static_assert(offsetof(kvm_xen_hvm_attr, u) == 8);
static_assert(sizeof(kvm_xen_vcpu_attr) == 72);
static_assert(offsetof(kvm_xen_vcpu_attr, u) == 8);
static_assert(sizeof(kvm_irq_routing_xen_evtchn) == 12);
static_assert(sizeof(kvm_irq_routing_entry) == 48);
static_assert(offsetof(kvm_irq_routing_entry, u) == 16);
static_assert(offsetof(kvm_run, xen) == 32);
static_assert(offsetof(kvm_xen_exit, u.hcall.input) == 16);
static_assert(offsetof(kvm_xen_exit, u.hcall.result) == 24);
static_assert(offsetof(kvm_xen_exit, u.hcall.params) == 32);
static_assert(sizeof(kvm_xen_exit) == 80);

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_XEN_ABI_H_
