#include "components/accel/emu/emu_accelerator.h"

#include "components/accel/emu/emu_vcpu.h"
#include "components/base/status.h"

namespace xenkvm::accel {
namespace {

class EmuAccelerator final : public Accelerator {
 public:
  explicit EmuAccelerator(const memory::GuestMemory& memory) : vm_(memory) { capabilities_.name = "emu"; }
  const Capabilities& capabilities() const override { return capabilities_; }
  uint64_t tsc_khz() const override { return HostTscKhz(); }

  absl::Status EnableHypercallPage(uint32_t msr) override {
    if (msr == 0) return absl::InvalidArgumentError("the hypercall-page MSR must not be 0");
    vm_.hypercall_msr.store(msr);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Vcpu>> CreateVcpu(uint32_t id, std::optional<PvhEntry> boot) override {
    XENKVM_ASSIGN_OR_RETURN(std::unique_ptr<emu::EmuVcpu> vcpu, emu::EmuVcpu::Create(id, vm_, boot));
    return std::unique_ptr<Vcpu>(std::move(vcpu));
  }

 private:
  emu::EmuVmState vm_;
  Capabilities capabilities_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Accelerator>> CreateEmuAccelerator(const memory::GuestMemory& memory) {
  return std::unique_ptr<Accelerator>(new EmuAccelerator(memory));
}

}  // namespace xenkvm::accel
