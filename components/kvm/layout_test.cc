// Sizes and offsets of every KVM struct this component hands to the kernel, and the ioctl numbers
// computed from the headers against the numbers the kernel ABI documents.
#include <linux/kvm.h>

#include <cstddef>

#include "components/kvm/flex_array.h"
#include "components/kvm/xen_abi.h"
#include "gtest/gtest.h"

namespace xenkvm::kvm {
namespace {

TEST(LayoutTest, XenIoctlNumbersMatchTheKernelAbi) {
  EXPECT_EQ(KVM_XEN_HVM_CONFIG, 0x4038ae7aul);
  EXPECT_EQ(KVM_XEN_HVM_GET_ATTR, 0xc048aec8ul);
  EXPECT_EQ(KVM_XEN_HVM_SET_ATTR, 0x4048aec9ul);
  EXPECT_EQ(KVM_XEN_VCPU_GET_ATTR, 0xc048aecaul);
  EXPECT_EQ(KVM_XEN_VCPU_SET_ATTR, 0x4048aecbul);
  EXPECT_EQ(KVM_XEN_HVM_EVTCHN_SEND, 0x400caed0ul);
  EXPECT_EQ(KVM_EXIT_XEN, 34);
  EXPECT_EQ(KVM_CAP_XEN_HVM, 38);
  EXPECT_EQ(KVM_CAP_SPLIT_IRQCHIP, 121);
  EXPECT_EQ(KVM_IRQ_ROUTING_XEN_EVTCHN, 5);
}

TEST(LayoutTest, XenStructs) {
  EXPECT_EQ(sizeof(kvm_xen_hvm_config), 56u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, flags), 0u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, msr), 4u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, blob_addr_32), 8u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, blob_addr_64), 16u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, blob_size_32), 24u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_config, blob_size_64), 25u);

  EXPECT_EQ(sizeof(kvm_xen_hvm_attr), 72u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u), 8u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.shared_info.gfn), 8u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.send_port), 8u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.type), 12u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.flags), 16u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.deliver.port.port), 20u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.deliver.port.vcpu), 24u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.deliver.port.priority), 28u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.evtchn.deliver.eventfd.fd), 24u);
  EXPECT_EQ(offsetof(kvm_xen_hvm_attr, u.xen_version), 8u);

  EXPECT_EQ(sizeof(kvm_xen_vcpu_attr), 72u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.gpa), 8u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.runstate.state), 8u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.runstate.time_offline), 48u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.vcpu_id), 8u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.timer.port), 8u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.timer.priority), 12u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.timer.expires_ns), 16u);
  EXPECT_EQ(offsetof(kvm_xen_vcpu_attr, u.vector), 8u);

  EXPECT_EQ(sizeof(kvm_irq_routing_xen_evtchn), 12u);
  EXPECT_EQ(sizeof(kvm_xen_exit), 80u);
  EXPECT_EQ(offsetof(kvm_xen_exit, u.hcall.longmode), 8u);
  EXPECT_EQ(offsetof(kvm_xen_exit, u.hcall.cpl), 12u);
  EXPECT_EQ(offsetof(kvm_xen_exit, u.hcall.input), 16u);
  EXPECT_EQ(offsetof(kvm_xen_exit, u.hcall.result), 24u);
  EXPECT_EQ(offsetof(kvm_xen_exit, u.hcall.params), 32u);
}

TEST(LayoutTest, KvmRun) {
  EXPECT_EQ(offsetof(kvm_run, immediate_exit), 1u);
  EXPECT_EQ(offsetof(kvm_run, exit_reason), 8u);
  EXPECT_EQ(offsetof(kvm_run, io), 32u);
  EXPECT_EQ(offsetof(kvm_run, xen), 32u);
  EXPECT_EQ(offsetof(kvm_run, io.data_offset), 40u);
  EXPECT_EQ(offsetof(kvm_run, mmio.phys_addr), 32u);
  EXPECT_EQ(offsetof(kvm_run, mmio.data), 40u);
  EXPECT_EQ(offsetof(kvm_run, mmio.len), 48u);
  EXPECT_EQ(offsetof(kvm_run, msr.error), 32u);
  EXPECT_EQ(offsetof(kvm_run, msr.reason), 40u);
  EXPECT_EQ(offsetof(kvm_run, msr.index), 44u);
  EXPECT_EQ(offsetof(kvm_run, msr.data), 48u);
  EXPECT_EQ(offsetof(kvm_run, eoi.vector), 32u);
  EXPECT_EQ(offsetof(kvm_run, system_event.type), 32u);
  EXPECT_EQ(offsetof(kvm_run, system_event.data), 40u);
}

TEST(LayoutTest, RoutingAndDeviceStructs) {
  EXPECT_EQ(sizeof(kvm_irq_routing_entry), 48u);
  EXPECT_EQ(offsetof(kvm_irq_routing_entry, type), 4u);
  EXPECT_EQ(offsetof(kvm_irq_routing_entry, u), 16u);
  EXPECT_EQ(offsetof(kvm_irq_routing_entry, u.msi.address_lo), 16u);
  EXPECT_EQ(offsetof(kvm_irq_routing_entry, u.msi.data), 24u);
  EXPECT_EQ(offsetof(kvm_irq_routing_entry, u.xen_evtchn.priority), 24u);
  EXPECT_EQ(sizeof(kvm_irqfd), 32u);
  EXPECT_EQ(offsetof(kvm_irqfd, resamplefd), 12u);
  EXPECT_EQ(sizeof(kvm_ioeventfd), 64u);
  EXPECT_EQ(offsetof(kvm_ioeventfd, flags), 24u);
  EXPECT_EQ(sizeof(kvm_msi), 32u);
  EXPECT_EQ(sizeof(kvm_userspace_memory_region), 32u);
  EXPECT_EQ(sizeof(kvm_enable_cap), 104u);
  EXPECT_EQ(sizeof(kvm_clock_data), 48u);
}

TEST(LayoutTest, FlexibleArrayIoctlNumbersUseTheKernelSizes) {
  EXPECT_EQ(internal::kKvmGetMsrIndexList, 0xc004ae02ul);
  EXPECT_EQ(internal::kKvmGetSupportedCpuid, 0xc008ae05ul);
  EXPECT_EQ(internal::kKvmSetGsiRouting, 0x4008ae6aul);
  EXPECT_EQ(internal::kKvmGetMsrs, 0xc008ae88ul);
  EXPECT_EQ(internal::kKvmSetMsrs, 0x4008ae89ul);
  EXPECT_EQ(internal::kKvmSetCpuid2, 0x4008ae90ul);
  EXPECT_EQ(internal::kKvmGetCpuid2, 0xc008ae91ul);
}

TEST(LayoutTest, FlexibleArrayOffsetsFollowTheKernelNotTheCxxHeaders) {
  // The kernel reads the first element right after the fixed fields.
  EXPECT_EQ(internal::kIrqRoutingEntriesOffset, sizeof(uint32_t) * 2);  // nr, flags
  EXPECT_EQ(internal::kMsrsEntriesOffset, sizeof(uint32_t) * 2);        // nmsrs, pad
  EXPECT_EQ(internal::kCpuid2EntriesOffset, sizeof(uint32_t) * 2);      // nent, padding
  EXPECT_EQ(internal::kMsrListIndicesOffset, sizeof(uint32_t));         // nmsrs
  EXPECT_EQ(sizeof(kvm_msr_entry), 16u);
  EXPECT_EQ(sizeof(kvm_cpuid_entry2), 40u);

  internal::FlexArrayBuffer<kvm_msr_entry> buffer(internal::kMsrsEntriesOffset, 3);
  buffer.count() = 3;
  EXPECT_EQ(reinterpret_cast<uint8_t*>(buffer.entries()) - static_cast<uint8_t*>(buffer.data()), 8);
  EXPECT_EQ(buffer.size_bytes(), 8u + 3 * 16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 8, 0u);
}

}  // namespace
}  // namespace xenkvm::kvm
