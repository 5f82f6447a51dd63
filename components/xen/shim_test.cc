// The Xen shim answering hypercalls directly (no guest code): arguments are written into guest
// memory and the calling vCPU is a real emu vCPU that is not running (paging off, so linear
// addresses are physical). The guest tests (tests/guests/xen_*) cover the same paths end to end.
#include "components/xen/shim.h"

#include <cstring>

#include "components/accel/emu/emu_accelerator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

using memory::GuestAddress;
using ::testing::HasSubstr;

constexpr uint64_t kArg = 0x10000;        // where tests put hypercall arguments
constexpr uint64_t kSharedInfo = 0x20000;  // the shared_info page the "guest" maps
constexpr int64_t E(xen_errno error) { return -static_cast<int64_t>(error); }

class ShimTest : public ::testing::Test {
 protected:
  void Build(XenConfig config) {
    auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
    ASSERT_TRUE(memory.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(memory).value());
    auto accelerator = accel::CreateEmuAccelerator(*memory_);
    ASSERT_TRUE(accelerator.ok());
    accelerator_ = std::move(accelerator).value();
    Shim::Callbacks callbacks;
    callbacks.console = [this](uint8_t byte) { console_ += static_cast<char>(byte); };
    callbacks.shutdown = [this](ShutdownReason reason) { shutdowns_.push_back(reason); };
    auto shim = Shim::Create(config, *memory_, *accelerator_, callbacks);
    ASSERT_TRUE(shim.ok()) << shim.status();
    shim_ = std::move(shim).value();
    for (uint32_t id = 0; id < config.vcpus; ++id) {
      auto vcpu = accelerator_->CreateVcpu(id, accel::PvhEntry{0x100000, 0, 0});
      ASSERT_TRUE(vcpu.ok());
      ASSERT_TRUE(shim_->AttachVcpu(**vcpu).ok());
      vcpus_.push_back(std::move(vcpu).value());
    }
  }
  void SetUp() override { Build(XenConfig{}); }
  void TearDown() override {
    vcpus_.clear();
    shim_.reset();
  }

  int64_t Call(uint64_t number, std::array<uint64_t, 6> args, bool long_mode = true, uint8_t cpl = 0,
               uint32_t vcpu = 0) {
    accel::HypercallExit exit{number, args, long_mode, cpl};
    uint64_t result = shim_->Hypercall(*vcpus_[vcpu], exit);
    return long_mode ? static_cast<int64_t>(result) : static_cast<int64_t>(static_cast<int32_t>(result));
  }
  template <typename T>
  void Put(const T& object, uint64_t at = kArg) {
    ASSERT_TRUE(memory_->WriteObject(GuestAddress(at), object).ok());
  }
  template <typename T>
  T Get(uint64_t at = kArg) {
    return *memory_->ReadObject<T>(GuestAddress(at));
  }
  int64_t Evtchn(uint32_t command, bool long_mode = true) {
    return Call(__HYPERVISOR_event_channel_op, {command, kArg}, long_mode);
  }
  // alloc_unbound(remote): the new port, or the error.
  int64_t AllocUnbound(uint16_t remote = DOMID_SELF, bool long_mode = true) {
    Put(evtchn_alloc_unbound_t{DOMID_SELF, remote, 0});
    int64_t rc = Evtchn(EVTCHNOP_alloc_unbound, long_mode);
    return rc == 0 ? Get<evtchn_alloc_unbound_t>().port : rc;
  }
  int64_t PortOp(uint32_t command, uint32_t port) {
    Put(port);
    return Evtchn(command);
  }
  void MapSharedInfo(bool long_mode = true) {
    // 64-bit: domid size space idx(8) gpfn(8); 32-bit: idx(4) gpfn(4).
    uint8_t add[24] = {};
    uint16_t domid = DOMID_SELF;
    uint32_t space = XENMAPSPACE_shared_info;
    std::memcpy(add, &domid, 2);
    std::memcpy(add + 4, &space, 4);
    uint64_t gpfn = kSharedInfo >> 12;
    std::memcpy(add + (long_mode ? 16 : 12), &gpfn, long_mode ? 8 : 4);
    ASSERT_TRUE(memory_->Write(GuestAddress(kArg), add).ok());
    ASSERT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}, long_mode), 0);
  }
  const PortSnapshot* Port(uint32_t port) {
    stats_ = shim_->Statistics();
    for (const PortSnapshot& snapshot : stats_.ports) {
      if (snapshot.port == port) return &snapshot;
    }
    return nullptr;
  }

  std::unique_ptr<memory::GuestMemory> memory_;
  std::unique_ptr<accel::Accelerator> accelerator_;
  std::unique_ptr<Shim> shim_;
  std::vector<std::unique_ptr<accel::Vcpu>> vcpus_;
  std::string console_;
  std::vector<ShutdownReason> shutdowns_;
  ShimStatistics stats_;
};

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
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  };
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 1, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // idx != 0
  Put(Add64{7, 0, XENMAPSPACE_shared_info, 0, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_ESRCH));  // another domain
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, 0xfee00});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // the local APIC
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, uint64_t{1} << 28});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // beyond 40 bits
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, ~uint64_t{0}});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_grant_table, 64, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // beyond 64 frames
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_gmfn_foreign, 0, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EPERM));
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_gmfn_range, 0, 0x30});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EOPNOTSUPP));
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, 0xd0000000}), E(XEN_EFAULT));
}

// Linux PVH places its grant-table frames at unpopulated addresses (XEN_UNPOPULATED_ALLOC): they
// get an extra page there, and lose it when the frame moves on.
TEST_F(ShimTest, FramesOutsideRamGetBackingAndLoseItWhenMoved) {
  MapSharedInfo();
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  };
  auto place = [this](uint32_t space, uint64_t index, uint64_t gpfn) {
    Put(Add64{DOMID_SELF, 0, space, index, gpfn});
    return Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg});
  };
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
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  };
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_grant_table, 0, 0x40});
  ASSERT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_grant_table, 2, 0x42});
  ASSERT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  Put(Add64{DOMID_SELF, 0, XENMAPSPACE_grant_table, 1 | XENMAPIDX_grant_table_status, 0x41});
  EXPECT_EQ(Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), E(XEN_EINVAL));  // v1: no status frames
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
  Put(gnttab_set_version_t{2});
  EXPECT_EQ(Call(__HYPERVISOR_grant_table_op, {GNTTABOP_set_version, kArg, 1}), E(XEN_EOPNOTSUPP));
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

TEST_F(ShimTest, LoopbackSendRaisesTheUpcallAndCountsIt) {
  MapSharedInfo();
  int64_t a = AllocUnbound();
  ASSERT_GT(a, 0);
  Put(evtchn_bind_interdomain_t{DOMID_SELF, static_cast<uint32_t>(a), 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_interdomain), 0);
  uint32_t b = Get<evtchn_bind_interdomain_t>().local_port;
  // The bind raised b; clear it as a guest's handler would.
  memory_->WriteObject(GuestAddress(kSharedInfo + 0x800), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo), uint64_t{0}).IgnoreError();       // upcall_pending
  memory_->WriteObject(GuestAddress(kSharedInfo + 8), uint64_t{0}).IgnoreError();   // pending_sel
  ASSERT_EQ(PortOp(EVTCHNOP_send, b), 0);
  EXPECT_EQ(Get<uint64_t>(kSharedInfo + 0x800) >> a & 1, 1u);  // evtchn_pending
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 1);                     // vcpu_info[0].evtchn_upcall_pending
  EXPECT_EQ(Get<uint64_t>(kSharedInfo + 8) & 1, 1u);           // evtchn_pending_sel word 0
  const PortSnapshot* pa = Port(a);
  ASSERT_NE(pa, nullptr);
  EXPECT_EQ(pa->type, PortType::kInterdomain);
  EXPECT_EQ(pa->remote, "loopback");
  EXPECT_EQ(pa->target, b);
  EXPECT_TRUE(pa->pending);
  EXPECT_EQ(pa->counters.deliveries, 1u);
  EXPECT_EQ(pa->counters.upcalls, 1u);
  EXPECT_EQ(Port(b)->counters.sends, 1u);

  // Masked: pending, no upcall, counted; unmask delivers.
  memory_->WriteObject(GuestAddress(kSharedInfo + 0x800), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo + 8), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo + 0xa00), uint64_t{1} << a).IgnoreError();
  ASSERT_EQ(PortOp(EVTCHNOP_send, b), 0);
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 0);
  EXPECT_EQ(Port(a)->counters.masked, 1u);
  EXPECT_TRUE(Port(a)->masked);
  ASSERT_EQ(PortOp(EVTCHNOP_unmask, a), 0);
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 1);
  EXPECT_FALSE(Port(a)->masked);

  // Status, then close: the peer is unbound again.
  evtchn_status_t status{};
  status.dom = DOMID_SELF;
  status.port = b;
  Put(status);
  ASSERT_EQ(Evtchn(EVTCHNOP_status), 0);
  EXPECT_EQ(Get<evtchn_status_t>().status, uint32_t{EVTCHNSTAT_interdomain});
  EXPECT_EQ(Get<evtchn_status_t>().u.interdomain.port, static_cast<uint32_t>(a));
  ASSERT_EQ(PortOp(EVTCHNOP_close, b), 0);
  EXPECT_EQ(Port(a)->type, PortType::kUnbound);
  EXPECT_EQ(Port(b), nullptr);
}

TEST_F(ShimTest, BadPortsGetTheRightErrors) {
  MapSharedInfo();
  EXPECT_EQ(PortOp(EVTCHNOP_send, 0), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 4096), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 0xffffffff), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 77), E(XEN_EINVAL));   // closed
  EXPECT_EQ(PortOp(EVTCHNOP_close, 77), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_unmask, 5000), E(XEN_EINVAL));
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_virq), 0);
  uint32_t timer = Get<evtchn_bind_virq_t>().port;
  EXPECT_EQ(PortOp(EVTCHNOP_send, timer), E(XEN_EINVAL));  // a VIRQ is not sent by the guest
  Put(evtchn_bind_vcpu_t{timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_vcpu), E(XEN_EINVAL));   // per-vCPU VIRQs stay put
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_EEXIST));
  Put(evtchn_bind_virq_t{VIRQ_CONSOLE, 1, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_ENOENT));   // no vCPU 1 in this VM
  Put(evtchn_bind_virq_t{24, 0, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_EINVAL));
  Put(evtchn_bind_interdomain_t{DOMID_SELF, timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_interdomain), E(XEN_EINVAL));  // not an unbound port
  Put(evtchn_bind_interdomain_t{9, timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_interdomain), E(XEN_EINVAL));  // another domain
  Put(evtchn_alloc_unbound_t{5, DOMID_SELF, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_alloc_unbound), E(XEN_ESRCH));
  EXPECT_EQ(Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_send, 0x7fff00000000}), E(XEN_EFAULT));
  EXPECT_EQ(Evtchn(EVTCHNOP_init_control), E(XEN_ENOSYS));  // FIFO: not yet
}

TEST_F(ShimTest, PortExhaustionAndTheConfiguredLimit) {
  MapSharedInfo();
  int count = 0;
  int64_t port;
  while ((port = AllocUnbound()) > 0) {
    EXPECT_LT(port, 4096);
    ++count;
  }
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 4095);

  TearDown();
  XenConfig small;
  small.max_event_channels = 128;
  Build(small);
  count = 0;
  while ((port = AllocUnbound()) > 0) ++count;
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 127);
}

TEST_F(ShimTest, AThirtyTwoBitGuestNeverGetsAPortAbove1023) {
  MapSharedInfo(/*long_mode=*/false);
  int count = 0;
  int64_t port;
  while ((port = AllocUnbound(DOMID_SELF, /*long_mode=*/false)) > 0) {
    EXPECT_LT(port, 1024);
    ++count;
  }
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 1023);
  EXPECT_EQ(PortOp(EVTCHNOP_send, 1024), E(XEN_EINVAL));
  // The 32-bit layout: pending words of 32 bits at 0x800, the mask at 0x880, selector at +4.
  ASSERT_TRUE(shim_->InjectEvent(40).ok());
  EXPECT_EQ(Get<uint32_t>(kSharedInfo + 0x800 + 4) >> 8 & 1, 1u);
  EXPECT_EQ(Get<uint32_t>(kSharedInfo + 4) >> 1 & 1, 1u);  // word 1 of evtchn_pending_sel
  // xen_version platform_parameters: a 4-byte virt_start.
  Put(uint64_t{~uint64_t{0}});
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_platform_parameters, kArg}, false), 0);
  EXPECT_EQ(Get<uint64_t>() >> 32, 0xffffffffu);  // the upper half untouched
}

TEST_F(ShimTest, VcpuInfoRegistrationIsChecked) {
  MapSharedInfo();
  auto register_at = [this](uint64_t mfn, uint32_t offset, uint32_t vcpu = 0) {
    Put(vcpu_register_vcpu_info_t{mfn, offset, 0});
    return Call(__HYPERVISOR_vcpu_op, {VCPUOP_register_vcpu_info, vcpu, kArg});
  };
  EXPECT_EQ(register_at(0xd0000, 0), E(XEN_EINVAL));         // not RAM
  EXPECT_EQ(register_at(0x40, 4090), E(XEN_EINVAL));         // crosses the page
  EXPECT_EQ(register_at(0x40, 4), E(XEN_EINVAL));            // misaligned
  EXPECT_EQ(register_at(~uint64_t{0}, 0), E(XEN_EINVAL));    // overflows
  EXPECT_EQ(register_at(0x40, 0, 5), E(XEN_ENOENT));         // no such vCPU
  EXPECT_EQ(register_at(0x40, 64), 0);
  EXPECT_EQ(register_at(0x41, 0), E(XEN_EINVAL));            // once only
  // The registered vcpu_info took over: an event lands there, with pvclock time in it.
  EXPECT_EQ(Get<uint8_t>(0x40040), 1);  // everything marked pending on the move, as Xen does
  EXPECT_NE(Get<uint32_t>(0x40040 + 32 + 24), 0u);  // tsc_to_system_mul
  EXPECT_EQ(Get<uint32_t>(0x40040 + 32) % 2, 0u);   // version even
}

TEST_F(ShimTest, TimersFireVirqTimer) {
  MapSharedInfo();
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_virq), 0);
  uint32_t timer = Get<evtchn_bind_virq_t>().port;
  struct Singleshot {
    uint64_t timeout;
    uint32_t flags, pad;
  };
  Put(Singleshot{1, VCPU_SSHOTTMR_future, 0});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_singleshot_timer, 0, kArg}), E(XEN_ETIME));
  Put(Singleshot{shim_->SystemTimeNs() + 2'000'000, 0, 0});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_singleshot_timer, 0, kArg}), 0);
  for (int i = 0; i < 500 && !Port(timer)->pending; ++i) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_TRUE(Port(timer)->pending);
  Put(uint64_t{500'000});
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_set_periodic_timer, 0, kArg}), E(XEN_EINVAL));  // < 1 ms
  EXPECT_EQ(Call(__HYPERVISOR_vcpu_op, {VCPUOP_stop_singleshot_timer, 0, 0}), 0);
  EXPECT_EQ(Call(__HYPERVISOR_set_timer_op, {0}), 0);
}

TEST_F(ShimTest, BackendsBindNotifyAndHear) {
  MapSharedInfo();
  int64_t guest_port = AllocUnbound(/*remote=*/0);
  ASSERT_GT(guest_port, 0);
  int heard = 0;
  EXPECT_EQ(shim_->BindBackend(999, [] {}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(shim_->BindBackend(guest_port, [&heard] { ++heard; }).ok());
  EXPECT_EQ(Port(guest_port)->remote, "backend");
  ASSERT_EQ(PortOp(EVTCHNOP_send, guest_port), 0);
  EXPECT_EQ(heard, 1);  // no event loop here: the handler runs at once
  ASSERT_TRUE(shim_->NotifyGuest(guest_port).ok());
  EXPECT_TRUE(Port(guest_port)->pending);
  ASSERT_TRUE(shim_->UnbindBackend(guest_port).ok());
  EXPECT_EQ(Port(guest_port)->type, PortType::kUnbound);
  EXPECT_EQ(shim_->NotifyGuest(guest_port).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<uint32_t> store = shim_->AllocateBackendPort([&heard] { heard += 10; });
  ASSERT_TRUE(store.ok());
  shim_->SetHvmParam(HVM_PARAM_STORE_EVTCHN, *store);
  xen_hvm_param_t param{DOMID_SELF, 0, HVM_PARAM_STORE_EVTCHN, 0};
  Put(param);
  ASSERT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_get_param, kArg}), 0);
  EXPECT_EQ(Get<xen_hvm_param_t>().value, *store);
  ASSERT_EQ(PortOp(EVTCHNOP_send, *store), 0);
  EXPECT_EQ(heard, 11);
}

TEST_F(ShimTest, InjectEventRefusesBadPorts) {
  EXPECT_EQ(shim_->InjectEvent(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shim_->InjectEvent(4096).message(), HasSubstr("outside 1..4095"));
  EXPECT_EQ(shim_->InjectEvent(12).code(), absl::StatusCode::kNotFound);
  int64_t port = AllocUnbound();
  ASSERT_TRUE(shim_->InjectEvent(port).ok());
  EXPECT_EQ(Port(port)->counters.sends, 1u);
  EXPECT_EQ(Port(port)->counters.deliveries, 1u);
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

}  // namespace
}  // namespace xenkvm::xen

// The kernel's event delivery (kvm with KVM_CAP_XEN_HVM EVTCHN_SEND, Linux 5.19+): skipped where the
// kernel lacks it, as on the development machines.
#include "components/accel/kvm/kvm_accelerator.h"
#include "components/kvm/kvm.h"

namespace xenkvm::xen {
namespace {

TEST(ShimKvmTest, KernelDeliveryRaisesPortsInGuestMemory) {
  if (absl::Status usable = kvm::KvmUsable(); !usable.ok()) GTEST_SKIP() << "needs a usable /dev/kvm: " << usable.message();
  auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
  ASSERT_TRUE(memory.ok());
  auto accelerator = accel::CreateKvmAccelerator(*memory);
  ASSERT_TRUE(accelerator.ok()) << accelerator.status();
  if ((*accelerator)->kernel_xen_events() == nullptr) {
    GTEST_SKIP() << "needs KVM's Xen event delivery (KVM_CAP_XEN_HVM EVTCHN_SEND, Linux 5.19+, CONFIG_KVM_XEN)";
  }
  auto shim = Shim::Create(XenConfig{}, *memory, **accelerator, {});
  ASSERT_TRUE(shim.ok());
  EXPECT_TRUE((*shim)->kernel_delivery());
  auto vcpu = (*accelerator)->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0});
  ASSERT_TRUE(vcpu.ok());
  ASSERT_TRUE((*shim)->AttachVcpu(**vcpu).ok());
  auto call = [&](uint64_t number, std::array<uint64_t, 6> args) {
    return static_cast<int64_t>((*shim)->Hypercall(**vcpu, accel::HypercallExit{number, args, true, 0}));
  };
  struct {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, kSharedInfo >> 12};
  ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), add).ok());
  ASSERT_EQ(call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), evtchn_alloc_unbound_t{DOMID_SELF, DOMID_SELF, 0}).ok());
  ASSERT_EQ(call(__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg}), 0);
  uint32_t port = memory->ReadObject<evtchn_alloc_unbound_t>(GuestAddress(kArg))->port;
  ASSERT_TRUE((*shim)->InjectEvent(port).ok());
  EXPECT_EQ(*memory->ReadObject<uint64_t>(GuestAddress(kSharedInfo + 0x800)) >> port & 1, 1u);
  EXPECT_EQ(*memory->ReadObject<uint8_t>(GuestAddress(kSharedInfo)), 1);  // vcpu_info[0] upcall_pending
}

}  // namespace
}  // namespace xenkvm::xen

namespace xenkvm::xen {
namespace {

// A vCPU whose local APIC is off until the test turns it on: InjectInterrupt fails meanwhile, as
// KVM's does before the guest enables its LAPIC. Everything else goes to a real emu vCPU.
class LapicOffVcpu final : public accel::Vcpu {
 public:
  explicit LapicOffVcpu(std::unique_ptr<accel::Vcpu> inner) : inner_(std::move(inner)) {}
  uint32_t id() const override { return inner_->id(); }
  absl::StatusOr<accel::Exit> Run() override { return inner_->Run(); }
  absl::Status Complete(uint64_t value) override { return inner_->Complete(value); }
  absl::StatusOr<accel::Registers> GetRegisters() override { return inner_->GetRegisters(); }
  absl::Status SetRegisters(const accel::Registers& r) override { return inner_->SetRegisters(r); }
  absl::StatusOr<accel::ControlRegisters> GetControlRegisters() override { return inner_->GetControlRegisters(); }
  absl::StatusOr<uint64_t> TranslateLinear(uint64_t linear) override { return inner_->TranslateLinear(linear); }
  absl::StatusOr<int64_t> TscOffset() override { return inner_->TscOffset(); }
  absl::Status SetCpuid(std::vector<accel::CpuidLeaf> leaves) override { return inner_->SetCpuid(std::move(leaves)); }
  absl::Status Start(const accel::PvhEntry& boot) override { return inner_->Start(boot); }
  absl::Status InjectInterrupt(uint8_t vector) override {
    if (!lapic_enabled.load()) return absl::FailedPreconditionError("the guest has not enabled its local APIC");
    ++injected;
    return absl::OkStatus();
  }
  void Kick() override { inner_->Kick(); }

  std::atomic<bool> lapic_enabled{false};
  std::atomic<int> injected{0};

 private:
  std::unique_ptr<accel::Vcpu> inner_;
};

// Xen delivers an upcall while upcall_pending is set: one the vCPU could not take is not lost but
// raised again, at its next hypercall and by the timer thread, once the vCPU can take it.
TEST(ShimUpcallTest, UpcallNotTakenIsRetriedWhileUpcallPendingIsSet) {
  auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
  ASSERT_TRUE(memory.ok());
  auto accelerator = accel::CreateEmuAccelerator(*memory);
  ASSERT_TRUE(accelerator.ok());
  auto shim = Shim::Create(XenConfig{}, *memory, **accelerator, {});
  ASSERT_TRUE(shim.ok());
  auto inner = (*accelerator)->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0});
  ASSERT_TRUE(inner.ok());
  LapicOffVcpu vcpu(std::move(inner).value());
  ASSERT_TRUE((*shim)->AttachVcpu(vcpu).ok());
  auto call = [&](uint64_t number, std::array<uint64_t, 6> args) {
    return static_cast<int64_t>((*shim)->Hypercall(vcpu, accel::HypercallExit{number, args, true, 0}));
  };
  auto put = [&](const auto& object) { ASSERT_TRUE(memory->WriteObject(GuestAddress(kArg), object).ok()); };
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  } add{DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, kSharedInfo >> 12};
  put(add);
  ASSERT_EQ(call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg}), 0);
  put(xen_hvm_param_t{DOMID_SELF, 0, HVM_PARAM_CALLBACK_IRQ, (uint64_t{HVM_PARAM_CALLBACK_TYPE_VECTOR} << 56) | 0xf3});
  ASSERT_EQ(call(__HYPERVISOR_hvm_op, {HVMOP_set_param, kArg}), 0);
  put(evtchn_alloc_unbound_t{DOMID_SELF, DOMID_SELF, 0});
  ASSERT_EQ(call(__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg}), 0);
  const uint32_t port = memory->ReadObject<evtchn_alloc_unbound_t>(GuestAddress(kArg))->port;
  ASSERT_TRUE((*shim)->InjectEvent(port).ok());  // upcall_pending set; the vCPU cannot take it
  EXPECT_EQ(vcpu.injected.load(), 0);

  vcpu.lapic_enabled = true;  // the guest enables its LAPIC: the timer thread raises it again
  for (int i = 0; i < 200 && vcpu.injected.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_GE(vcpu.injected.load(), 1);
  const int after_timer = vcpu.injected.load();
  // Taken: nothing more is raised while the guest has not seen new events.
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(vcpu.injected.load(), after_timer);
  // Not taken again, the guest having cleared upcall_pending meanwhile: the debt is dropped.
  vcpu.lapic_enabled = false;
  ASSERT_TRUE(memory->WriteObject<uint8_t>(GuestAddress(kSharedInfo), 0).ok());      // upcall_pending
  ASSERT_TRUE(memory->WriteObject<uint64_t>(GuestAddress(kSharedInfo + 0x800), 0).ok());  // pending bits
  ASSERT_TRUE((*shim)->InjectEvent(port).ok());
  ASSERT_TRUE(memory->WriteObject<uint8_t>(GuestAddress(kSharedInfo), 0).ok());
  vcpu.lapic_enabled = true;
  EXPECT_EQ(call(__HYPERVISOR_xen_version, {XENVER_version, 0}), 0x40011);
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(vcpu.injected.load(), after_timer);
}

}  // namespace
}  // namespace xenkvm::xen
