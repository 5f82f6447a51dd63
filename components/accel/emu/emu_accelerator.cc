#include "components/accel/emu/emu_accelerator.h"

#include "components/accel/emu/emu_vcpu.h"
#include "absl/strings/str_format.h"
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

  // Each engine maps the change before its next run; a run in progress is stopped for it.
  absl::Status ShowExtraPage(uint64_t address, uint8_t* host) override {
    {
      absl::MutexLock lock(&vm_.extra_mutex);
      vm_.extra_pages[address] = host;
      vm_.extra_generation.fetch_add(1, std::memory_order_release);
    }
    vm_.StopEngines();
    return absl::OkStatus();
  }

  absl::Status HideExtraPage(uint64_t address) override {
    {
      absl::MutexLock lock(&vm_.extra_mutex);
      if (vm_.extra_pages.erase(address) == 0) {
        return absl::NotFoundError(absl::StrFormat("emu: no page shown at %#x", address));
      }
      vm_.extra_generation.fetch_add(1, std::memory_order_release);
    }
    vm_.StopEngines();
    return absl::OkStatus();
  }

  std::unique_ptr<GuestAtomicsExclusion> ExcludeGuestAtomics() override {
    class Held final : public GuestAtomicsExclusion {
     public:
      explicit Held(emu::EmuVmState& vm) : token_(vm.run_token) {
        token_.Acquire(/*urgent=*/true, [&vm] { vm.StopEngines(); });
      }
      ~Held() override { token_.Release(); }

     private:
      emu::RunToken& token_;
    };
    return std::make_unique<Held>(vm_);
  }

  absl::Status RestrictCpuid(CpuTemplate cpu_template) override {
    vm_.cpu_template = cpu_template;
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
