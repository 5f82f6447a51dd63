// The dispatcher and the hypercall families it answers itself: CPL and counters, xen_version,
// console_io and sched_op shutdown, memory_op, grant_table_op, hvm_op, vm_assist.
#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

using ::testing::HasSubstr;

TEST(XenConfigTest, CpuidLeavesFollowTheVersionAndOptions) {
  XenConfig config;
  config.version = 0x40005;
  auto leaves = CpuidLeaves(config, 3, 2'000'000);
  ASSERT_EQ(leaves[0].function, 0x40000000u);
  EXPECT_EQ(leaves[0].ebx, 0x566e6558u);
  EXPECT_EQ(leaves[1].eax, 0x40005u);
  EXPECT_EQ(leaves[2].ebx, 0x40000000u);  // the hypercall MSR
  const accel::CpuidLeaf& hvm = leaves.back();
  EXPECT_EQ(hvm.function, 0x40000004u);
  EXPECT_EQ(hvm.eax & XEN_HVM_CPUID_VCPU_ID_PRESENT, 0u);  // before 4.6
  EXPECT_EQ(hvm.eax & XEN_HVM_CPUID_UPCALL_VECTOR, 0u);
  config.version = 0x40011;
  config.xen_vapic = true;
  config.hyperv_leaves = true;
  leaves = CpuidLeaves(config, 3, 2'000'000);
  EXPECT_EQ(leaves[0].function, 0x40000100u);
  EXPECT_EQ(leaves[2].ebx, 0x40000200u);
  EXPECT_EQ(HypercallMsr(config), 0x40000200u);
  const accel::CpuidLeaf& vapic = leaves.back();
  EXPECT_NE(vapic.eax & XEN_HVM_CPUID_VCPU_ID_PRESENT, 0u);
  EXPECT_NE(vapic.eax & XEN_HVM_CPUID_UPCALL_VECTOR, 0u);
  EXPECT_NE(vapic.eax & XEN_HVM_CPUID_X2APIC_VIRT, 0u);
  EXPECT_EQ(vapic.ebx, 3u);  // vCPU id
  EXPECT_FALSE(Validate(XenConfig{.version = 0x1234}).ok());
  EXPECT_THAT(Validate(XenConfig{.max_event_channels = 10}).message(), HasSubstr("max event channels"));
}

// Xen offers HVM guests one assist, the runstate update flag (Linux PVH enables it); the others are
// -EINVAL, other commands -ENOSYS.
TEST_F(ShimTest, VmAssistOffersTheRunstateUpdateFlag) {
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {VMASST_CMD_enable, VMASST_TYPE_runstate_update_flag}), 0);
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {VMASST_CMD_disable, VMASST_TYPE_runstate_update_flag}), 0);
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {VMASST_CMD_enable, VMASST_TYPE_writable_pagetables}), E(XEN_EINVAL));
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {VMASST_CMD_enable, 99}), E(XEN_EINVAL));
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {7, VMASST_TYPE_runstate_update_flag}), E(XEN_ENOSYS));
  // With the flag on, a runstate area ends each update with the flag clear again.
  MapSharedInfo();
  EXPECT_EQ(Call(__HYPERVISOR_vm_assist, {VMASST_CMD_enable, VMASST_TYPE_runstate_update_flag}), 0);
  constexpr uint64_t kRunstate = 0x31000;
  Put(uint64_t{kRunstate});
  ASSERT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_register_runstate_memory_area, 0, kArg}), 0);
  EXPECT_EQ(Get<uint32_t>(kRunstate), uint32_t{RUNSTATE_running});
  const uint64_t entry = Get<uint64_t>(kRunstate + 8);
  EXPECT_NE(entry, 0u);
  EXPECT_EQ(entry & XEN_RUNSTATE_UPDATE, 0u);
}

TEST_F(ShimTest, DispatchRefusesUserSpaceAndCountsUnknownCalls) {
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_version}, true, 3), E(XEN_EPERM));
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_version}), 0x40011);
  EXPECT_EQ(Call(55, {}), E(XEN_ENOSYS));
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {999}), E(XEN_ENOSYS));
  ShimStatistics stats = shim_->Statistics();
  EXPECT_EQ(stats.refused_cpl, 1u);
  EXPECT_EQ(stats.unknown_hypercalls, 2u);
  EXPECT_EQ(stats.hypercalls[__HYPERVISOR_xen_version], 2u);
  EXPECT_EQ(stats.hypercalls[55], 1u);
}

TEST_F(ShimTest, XenVersionAnswersIntoGuestMemory) {
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_capabilities, kArg}), 0);
  EXPECT_THAT(std::string(reinterpret_cast<char*>(memory_->HostAddress(GuestAddress(kArg), 64).value())),
              HasSubstr("hvm-3.0-x86_64"));
  Put(xen_feature_info_t{0, 0});
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_get_features, kArg}), 0);
  EXPECT_NE(Get<xen_feature_info_t>().submap & (1u << XENFEAT_hvm_callback_vector), 0u);
  Put(xen_feature_info_t{7, 0xffffffff});
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_get_features, kArg}), 0);
  EXPECT_EQ(Get<xen_feature_info_t>().submap, 0u);  // unknown submaps are empty
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_pagesize}), 4096);
  // A handle outside guest RAM earns -EFAULT, never a crash.
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_extraversion, 0xd0000000}), E(XEN_EFAULT));
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_compile_info, (16 << 20) - 8}), E(XEN_EFAULT));
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_commandline, kArg}), E(XEN_EPERM));
}

TEST_F(ShimTest, ConsoleIoAndShutdown) {
  const char text[] = "hi from console_io";
  ASSERT_TRUE(memory_->Write(GuestAddress(kArg), std::span(reinterpret_cast<const uint8_t*>(text), 18)).ok());
  EXPECT_EQ(Call(__HYPERVISOR_console_io, {CONSOLEIO_write, 18, kArg}), 0);
  EXPECT_EQ(console_, "hi from console_io");
  EXPECT_EQ(Call(__HYPERVISOR_console_io, {CONSOLEIO_write, 18, 0xd0000000}), E(XEN_EFAULT));
  EXPECT_EQ(Call(__HYPERVISOR_console_io, {CONSOLEIO_read, 10, kArg}), 0);
  EXPECT_EQ(Call(__HYPERVISOR_console_io, {7, 10, kArg}), E(XEN_EINVAL));
  Put(uint32_t{SHUTDOWN_suspend});
  EXPECT_EQ(Call(__HYPERVISOR_sched_op, {SCHEDOP_shutdown, kArg}), E(XEN_EINVAL));
  Put(uint32_t{SHUTDOWN_crash});
  EXPECT_EQ(Call(__HYPERVISOR_sched_op, {SCHEDOP_shutdown, kArg}), 0);
  EXPECT_EQ(shutdowns_, std::vector<ShutdownReason>{ShutdownReason::kCrash});
}

// pvgrub2 asks for the memory map before anything else; Xen copies min(asked, held) entries.
TEST_F(ShimTest, MemoryMapAnswersTheConfiguredMapInBothAbis) {
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_memory_map, kArg}), E(XEN_ENOSYS));  // no map configured
  XenConfig config;
  config.memory_map = {{0, 0xa0000, 1}, {0xa0000, 0x60000, 2}, {0x100000, 0xf00000, 1}};
  TearDown();
  Build(config);
  constexpr uint64_t kBuffer = kArg + 0x100;
  struct Map64 {
    uint32_t nr_entries, pad;
    uint64_t buffer;
  };
  struct __attribute__((packed)) Entry {
    uint64_t address, size;
    uint32_t type;
  };
  Put(Map64{8, 0, kBuffer});
  ASSERT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_memory_map, kArg}), 0);
  EXPECT_EQ(memory_->ReadObject<uint32_t>(GuestAddress(kArg)).value(), 3u);
  Entry third = memory_->ReadObject<Entry>(GuestAddress(kBuffer + 2 * sizeof(Entry))).value();
  EXPECT_EQ(third.address, 0x100000u);
  EXPECT_EQ(third.size, 0xf00000u);
  EXPECT_EQ(third.type, 1u);
  // 32-bit ABI (buffer handle at 4), room for one entry: one copied, the second left alone.
  Put(Entry{0x1234, 0x5678, 9}, kBuffer + sizeof(Entry));
  Put(uint32_t{1});
  Put(static_cast<uint32_t>(kBuffer), kArg + 4);
  ASSERT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_memory_map, kArg}, /*long_mode=*/false), 0);
  EXPECT_EQ(memory_->ReadObject<uint32_t>(GuestAddress(kArg)).value(), 1u);
  EXPECT_EQ(memory_->ReadObject<Entry>(GuestAddress(kBuffer)).value().size, 0xa0000u);
  EXPECT_EQ(memory_->ReadObject<Entry>(GuestAddress(kBuffer + sizeof(Entry))).value().type, 9u);
  // A buffer outside guest memory, or the argument itself.
  Put(Map64{8, 0, 0xd0000000});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_memory_map, kArg}), E(XEN_EFAULT));
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_memory_map, 0xd0000000}), E(XEN_EFAULT));
}

TEST_F(ShimTest, AddToPhysmapChecksSpaceIndexAndDomain) {
  MapSharedInfo();
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_shared_info, 1, 0x30), E(XEN_EINVAL));  // idx != 0
  Put(Add64{7, 0, XENMAPSPACE_shared_info, 0, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_ESRCH));  // another domain
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_shared_info, 0, 0xfee00), E(XEN_EINVAL));  // the local APIC
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, uint64_t{1} << 28});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // beyond 40 bits
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, ~uint64_t{0}});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 64, 0x30), E(XEN_EINVAL));  // beyond 64 frames
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_gmfn_foreign, 0, 0x30), E(XEN_EPERM));
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_gmfn_range, 0, 0x30), E(XEN_EOPNOTSUPP));
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, 0xd0000000}), E(XEN_EFAULT));
}

// Linux PVH places its grant-table frames at unpopulated addresses (XEN_UNPOPULATED_ALLOC): they
// get an extra page there, and lose it when the frame moves on.
TEST_F(ShimTest, FramesOutsideRamGetBackingAndLoseItWhenMoved) {
  MapSharedInfo();
  auto place = [this](uint32_t space, uint64_t index, uint64_t gpfn) { return AddToPhysmap(space, index, gpfn); };
  const uint64_t kOutside = 0x20000;  // 512 MiB, beyond this guest's 16 MiB
  ASSERT_EQ(place(XENMAPSPACE_grant_table, 0, kOutside), 0);
  ASSERT_EQ(place(XENMAPSPACE_grant_table, 1, kOutside + 1), 0);
  EXPECT_TRUE(memory_->IsExtraPage(GuestAddress(kOutside << 12)));
  EXPECT_TRUE(memory_->IsExtraPage(GuestAddress((kOutside + 1) << 12)));
  // The table works there: a grant written at its entry is mapped by the backend side.
  ASSERT_TRUE(memory_->WriteObject(GuestAddress((kOutside << 12) + 8 * 10),
                                   grant_entry_v1_t{GTF_permit_access, 0, 0x50}).ok());
  GrantTable::Mapping mapping;
  ASSERT_EQ(shim_->grant_table().Map(10, false, &mapping), GNTST_okay);
  EXPECT_EQ(mapping.gfn, 0x50u);
  shim_->grant_table().Unmap(mapping);
  // Frame 0 moves: its entries go along, and the page it left is taken away.
  ASSERT_EQ(place(XENMAPSPACE_grant_table, 0, kOutside + 7), 0);
  EXPECT_FALSE(memory_->IsExtraPage(GuestAddress(kOutside << 12)));
  EXPECT_EQ(Get<uint32_t>(((kOutside + 7) << 12) + 8 * 10 + 4), 0x50u);
  // The shared info can leave RAM too, and come back.
  ASSERT_EQ(place(XENMAPSPACE_shared_info, 0, kOutside + 9), 0);
  EXPECT_TRUE(memory_->IsExtraPage(GuestAddress((kOutside + 9) << 12)));
  ASSERT_EQ(place(XENMAPSPACE_shared_info, 0, kSharedInfo >> 12), 0);
  EXPECT_FALSE(memory_->IsExtraPage(GuestAddress((kOutside + 9) << 12)));
  EXPECT_TRUE(memory_->IsExtraPage(GuestAddress((kOutside + 1) << 12)));  // still frame 1's
}

TEST_F(ShimTest, GrantTableOpsOfVersionOne) {
  // query_size before any frame is mapped, then after mapping frames 0 and 2 (1 comes with them).
  Put(gnttab_query_size_t{DOMID_SELF, 0, 0, 0});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_query_size, kArg, 1}), 0);
  EXPECT_EQ(Get<gnttab_query_size_t>().nr_frames, 0u);
  EXPECT_EQ(Get<gnttab_query_size_t>().max_nr_frames, 64u);
  ASSERT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 0, 0x40), 0);
  ASSERT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 2, 0x42), 0);
  EXPECT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 1 | XENMAPIDX_grant_table_status, 0x41), E(XEN_EINVAL));  // v1: no status frames
  Put(gnttab_query_size_t{DOMID_SELF, 0, 0, 0});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_query_size, kArg, 1}), 0);
  EXPECT_EQ(Get<gnttab_query_size_t>().nr_frames, 3u);
  EXPECT_EQ(Get<gnttab_query_size_t>().status, GNTST_okay);
  Put(gnttab_query_size_t{5, 0, 0, 0});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_query_size, kArg, 1}), 0);
  EXPECT_EQ(Get<gnttab_query_size_t>().status, GNTST_bad_domain);
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_query_size, kArg, 2}), E(XEN_EINVAL));

  // setup_table: where each frame is (64-bit: 8-byte handle at 16 and 8-byte frames; 32-bit: 12, 4).
  constexpr uint64_t kList = kArg + 0x100;
  uint8_t setup[24] = {};
  uint16_t self = DOMID_SELF;
  uint32_t frames = 4;
  uint64_t list = kList;
  std::memcpy(setup, &self, 2);
  std::memcpy(setup + 4, &frames, 4);
  std::memcpy(setup + 16, &list, 8);
  ASSERT_TRUE(memory_->Write(GuestAddress(kArg), setup).ok());
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_setup_table, kArg, 1}), 0);
  EXPECT_EQ(Get<int16_t>(kArg + 8), GNTST_okay);
  EXPECT_EQ(Get<uint64_t>(kList), 0x40u);
  EXPECT_EQ(Get<uint64_t>(kList + 8), ~uint64_t{0});  // not mapped
  EXPECT_EQ(Get<uint64_t>(kList + 16), 0x42u);
  std::memset(setup, 0, sizeof(setup));
  std::memcpy(setup, &self, 2);
  std::memcpy(setup + 4, &frames, 4);
  std::memcpy(setup + 12, &list, 4);
  ASSERT_TRUE(memory_->Write(GuestAddress(kArg), setup).ok());
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_setup_table, kArg, 1}, /*long_mode=*/false), 0);
  EXPECT_EQ(Get<uint32_t>(kList + 8), 0x42u);
  frames = 65;  // beyond the limit
  std::memcpy(setup + 4, &frames, 4);
  ASSERT_TRUE(memory_->Write(GuestAddress(kArg), setup).ok());
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_setup_table, kArg, 1}, false), 0);
  EXPECT_EQ(Get<int16_t>(kArg + 8), GNTST_general_error);

  Put(gnttab_set_version_t{1});
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_set_version, kArg, 1}), 0);
  Put(gnttab_set_version_t{3});
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_set_version, kArg, 1}), E(XEN_EINVAL));
  EXPECT_EQ(Get<gnttab_set_version_t>().version, 1u);
  Put(gnttab_get_version_t{DOMID_SELF, 0});
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_get_version, kArg, 1}), 0);
  EXPECT_EQ(Get<gnttab_get_version_t>().version, 1u);
  Put(gnttab_get_version_t{9, 0});
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_get_version, kArg, 1}), E(XEN_ESRCH));
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_get_status_frames, kArg, 1}), E(XEN_EINVAL));
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_map_grant_ref, kArg, 1}), E(XEN_ENOSYS));
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_query_size, 0xd0000000, 1}), E(XEN_EFAULT));

  // A backend maps what the guest granted in its table.
  grant_entry_v1_t entry{GTF_permit_access, 0, 0x50};
  Put(entry, (0x42 << 12) + 3 * 8);  // ref 1027: frame 2, entry 3
  GrantTable::Mapping mapping;
  ASSERT_EQ(shim_->grant_table().Map(2 * kGrantEntriesPerFrame + 3, false, &mapping), GNTST_okay);
  EXPECT_EQ(mapping.gfn, 0x50u);
  shim_->grant_table().Unmap(mapping);
}

TEST_F(ShimTest, HvmParamsAndUpcallVector) {
  xen_hvm_param_t param{DOMID_SELF, 0, HVM_PARAM_CALLBACK_IRQ, (uint64_t{HVM_PARAM_CALLBACK_TYPE_VECTOR} << 56) | 5};
  Put(param);
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), E(XEN_EINVAL));  // vector < 0x10
  param.value = (uint64_t{HVM_PARAM_CALLBACK_TYPE_VECTOR} << 56) | 0xf3;
  Put(param);
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), 0);
  param.value = 9;  // a GSI: refused here, where the shim has no line to drive
  Put(param);
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), E(XEN_EINVAL));
  param.index = HVM_PARAM_STORE_PFN;
  Put(param);
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), E(XEN_EPERM));  // the toolstack's
  param.index = 999;
  Put(param);
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_get_param, kArg}), E(XEN_EINVAL));
  Put(xen_hvm_evtchn_upcall_vector_t{0, 0x0f});
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_evtchn_upcall_vector, kArg}), E(XEN_EINVAL));
  Put(xen_hvm_evtchn_upcall_vector_t{3, 0xf0});
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_evtchn_upcall_vector, kArg}), E(XEN_ENOENT));
  Put(xen_hvm_evtchn_upcall_vector_t{0, 0xf0});
  EXPECT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_set_evtchn_upcall_vector, kArg}), 0);
}

// GNTTABOP_copy from a 32-bit guest (24-byte ops), a bad op array, and version 2's status frames
// placed by add_to_physmap and listed by get_status_frames.
TEST_F(ShimTest, GrantCopyAndVersionTwo) {
  ASSERT_TRUE(memory_->Write(GuestAddress(0x50000 + 16), std::vector<uint8_t>{'x', 'e', 'n'}).ok());
  struct Copy32 {
    uint32_t source_gmfn;
    uint16_t source_domid, source_offset;
    uint32_t dest_gmfn;
    uint16_t dest_domid, dest_offset;
    uint16_t len, flags;
    int16_t status, pad;
  };
  static_assert(sizeof(Copy32) == 24);
  Put(Copy32{0x50, DOMID_SELF, 16, 0x51, DOMID_SELF, 32, 3, 0, 1, 0});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_copy, kArg, 1}, /*long_mode=*/false), 0);
  EXPECT_EQ(Get<Copy32>().status, GNTST_okay);
  EXPECT_EQ(Get<uint8_t>(0x51000 + 34), 'n');
  Put(Copy32{0x50, DOMID_SELF, 4095, 0x51, DOMID_SELF, 0, 3, 0, 1, 0});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_copy, kArg, 1}, false), 0);
  EXPECT_EQ(Get<Copy32>().status, GNTST_bad_copy_arg);
  Put(Copy32{0x100000, DOMID_SELF, 0, 0x51, DOMID_SELF, 0, 3, 0, 1, 0});  // not RAM
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_copy, kArg, 1}, false), 0);
  EXPECT_EQ(Get<Copy32>().status, GNTST_bad_page);
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_copy, 0xfffffff000, 2}), E(XEN_EFAULT));

  ASSERT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 0, 0x40), 0);
  Put(gnttab_set_version_t{2});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_set_version, kArg, 1}), 0);
  ASSERT_EQ(AddToPhysmap(XENMAPSPACE_grant_table, 0 | XENMAPIDX_grant_table_status, 0x200000), 0);  // outside RAM
  struct GetStatus {
    uint32_t nr_frames;
    uint16_t dom;
    int16_t status;
    uint64_t frame_list;
  };
  Put(GetStatus{1, DOMID_SELF, 1, kArg + 0x100});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_get_status_frames, kArg, 1}), 0);
  EXPECT_EQ(Get<GetStatus>().status, GNTST_okay);
  EXPECT_EQ(Get<uint64_t>(kArg + 0x100), 0x200000u);
  Put(GetStatus{2, DOMID_SELF, 1, kArg + 0x100});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_get_status_frames, kArg, 1}), 0);
  EXPECT_EQ(Get<GetStatus>().status, GNTST_general_error);
  Put(gnttab_set_version_t{1});
  ASSERT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_set_version, kArg, 1}), 0);
  EXPECT_FALSE(memory_->IsExtraPage(GuestAddress(uint64_t{0x200000} << 12)));  // the status frame's page went
}

}  // namespace
}  // namespace xenkvm::xen
