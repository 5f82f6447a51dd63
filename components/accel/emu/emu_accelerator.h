// The emu accelerator: guest vCPUs on Unicorn 2.1's software x86 CPU, with the same exits as KVM.
// Slow, but it runs everywhere, so everything above the CPU is tested end to end on every machine.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_EMU_ACCELERATOR_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_EMU_ACCELERATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::accel {

// CPUID leaves with this value in EAX's upper half are hypercalls (EAX's lower half is the number),
// answered by the emu accelerator without leaving the CPU model: a hypercall page whose stubs are
// `mov $(kEmuHypercallCpuidMagic | n), %eax; cpuid; ret` costs no emulator exit. No real CPUID leaf
// lives in this range.
inline constexpr uint32_t kEmuHypercallCpuidMagic = 0x7a5e0000;

// `memory` must outlive the accelerator and its vCPUs.
absl::StatusOr<std::unique_ptr<Accelerator>> CreateEmuAccelerator(const memory::GuestMemory& memory);

}  // namespace xenkvm::accel

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_EMU_ACCELERATOR_H_
