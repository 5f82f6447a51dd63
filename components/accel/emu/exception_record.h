// Unicorn keeps QEMU's "exception in flight" record (CPUX86State.old_exception) from one exception to
// the next: QEMU clears it when it delivers through the IDT, which Unicorn never does. So the second
// page fault or contributory exception of a guest's life is turned into a double fault, and the
// third into a triple fault that stops the engine as if the guest had halted. The record is not
// reachable through Unicorn's register interface; this finds its offset in a saved CPU context by
// raising known exceptions on a fresh engine, and clears it (context save, patch, restore) after
// each exception the backend delivers itself.
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_EXCEPTION_RECORD_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_EXCEPTION_RECORD_H_

#include <unicorn/unicorn.h>

#include <cstddef>

#include "absl/status/statusor.h"

namespace xenkvm::accel::emu {

class ExceptionRecord {
 public:
  // The record's place in `uc`'s saved CPU context. Found once per process, on a throwaway engine
  // that raises two divide errors; kFailedPrecondition if it is not found (a Unicorn other than the
  // 2.1 this backend is written for).
  static absl::StatusOr<ExceptionRecord> For(uc_engine* uc);
  ExceptionRecord(ExceptionRecord&& other) noexcept;
  ExceptionRecord& operator=(ExceptionRecord&& other) noexcept;
  ~ExceptionRecord();

  // No exception in flight: as QEMU leaves it after a delivery.
  absl::Status Clear(uc_engine* uc);

 private:
  ExceptionRecord(uc_context* context, size_t offset) : context_(context), offset_(offset) {}
  uc_context* context_ = nullptr;
  size_t offset_ = 0;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_EXCEPTION_RECORD_H_
