// The fixture of the shim's tests: the Xen shim answering hypercalls directly (no guest code).
// Arguments are written into guest memory and the calling vCPU is a real emu vCPU that is not
// running (paging off, so linear addresses are physical). The guest tests (tests/guests/xen_*)
// cover the same paths end to end.
#ifndef XENKVM_COMPONENTS_XEN_SHIM_TEST_FIXTURE_H_
#define XENKVM_COMPONENTS_XEN_SHIM_TEST_FIXTURE_H_

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "components/accel/emu/emu_accelerator.h"
#include "components/xen/shim.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

using memory::GuestAddress;

inline constexpr uint64_t kArg = 0x10000;        // where tests put hypercall arguments
inline constexpr uint64_t kSharedInfo = 0x20000;  // the shared_info page the "guest" maps
inline constexpr int64_t E(xen_errno error) { return -static_cast<int64_t>(error); }

class ShimTest : public ::testing::Test {
 protected:
  // `backend_loop`: where backend handlers are posted (null: they run at once). Replaces what an
  // earlier Build made, vCPUs and shim first (they refer to the accelerator and the memory).
  void Build(XenConfig config, base::EventLoop* backend_loop = nullptr) {
    vcpus_.clear();
    shim_.reset();
    auto memory = memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}});
    ASSERT_TRUE(memory.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(memory).value());
    auto accelerator = accel::CreateEmuAccelerator(*memory_);
    ASSERT_TRUE(accelerator.ok());
    accelerator_ = std::move(accelerator).value();
    Shim::Callbacks callbacks;
    callbacks.console = [this](uint8_t byte) { console_ += static_cast<char>(byte); };
    callbacks.shutdown = [this](ShutdownReason reason) { shutdowns_.push_back(reason); };
    auto shim = Shim::Create(config, *memory_, *accelerator_, callbacks, backend_loop);
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
  // struct xen_add_to_physmap, 64-bit.
  struct Add64 {
    uint16_t domid, size;
    uint32_t space;
    uint64_t idx, gpfn;
  };
  // XENMEM_add_to_physmap of `space` frame `index` at `gpfn` (64-bit); the result.
  int64_t AddToPhysmap(uint32_t space, uint64_t index, uint64_t gpfn) {
    Put(Add64{DOMID_SELF, 0, space, index, gpfn});
    return Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg});
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

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_SHIM_TEST_FIXTURE_H_
