// Abseil's lock-order checks, off in the binaries that run guests.
//
// Debian's Abseil is built without NDEBUG, so every absl::Mutex::Lock records the locks its
// thread holds in a process-wide graph (under one global lock) and looks for a cycle: nearly half
// of an event-channel send in components/xen's shim_benchmark (266 -> 144 ns without), and a lock
// every vCPU and I/O thread takes. Tests keep the checks (they find lock-order inversions before
// a guest does); xenkvm-vmm, xenkvmd and the benchmarks that measure them turn them off.
#ifndef XENKVM_COMPONENTS_BASE_LOCK_CHECKS_H_
#define XENKVM_COMPONENTS_BASE_LOCK_CHECKS_H_

namespace xenkvm::base {

// For the whole process; call before other threads start.
void DisableLockOrderChecks();

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_LOCK_CHECKS_H_
