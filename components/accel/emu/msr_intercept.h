// RDMSR and WRMSR as the guest executes them. Unicorn 2.1 carries both out itself, with no hook:
// unknown MSRs read as 0 and writes to them are dropped, and IA32_APIC_BASE reads as 0 (it has no
// APIC device), which hides the boot CPU's BSP flag. The link wraps Unicorn's two MSR helpers
// (`ld --wrap`, in third_party/BUILD.bazel's unicorn target), so each RDMSR and WRMSR first reaches
// the MsrHandler installed on the thread that runs the engine, and Unicorn's own handling after it
// when the handler leaves the MSR alone.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_MSR_INTERCEPT_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_MSR_INTERCEPT_H_

#include <cstdint>
#include <optional>

namespace xenkvm::accel::emu {

// Runs on the emulation thread, inside uc_emu_start (or inside a uc_reg_read/uc_reg_write of an
// MSR on that thread). It must not stop or restart the engine.
class MsrHandler {
 public:
  virtual ~MsrHandler() = default;
  // The value RDMSR returns, or nullopt for Unicorn's.
  virtual std::optional<uint64_t> OnRdmsr(uint32_t index) = 0;
  // True when the write was taken; false leaves it to Unicorn.
  virtual bool OnWrmsr(uint32_t index, uint64_t value) = 0;
};

// Installs `handler` for the current thread while it lives; scopes nest.
class ScopedMsrHandler {
 public:
  explicit ScopedMsrHandler(MsrHandler* handler);
  ~ScopedMsrHandler();
  ScopedMsrHandler(const ScopedMsrHandler&) = delete;
  ScopedMsrHandler& operator=(const ScopedMsrHandler&) = delete;

 private:
  MsrHandler* previous_;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_MSR_INTERCEPT_H_
