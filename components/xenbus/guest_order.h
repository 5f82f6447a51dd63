// A ring's event-index handshake with a guest, made safe where the guest's fences are not real.
//
// Both sides of a Xen ring avoid lost wake-ups the same way: "store my index; full fence; load
// yours" (the producer publishes and reads the consumer's event index; the consumer sets its
// event index and reads the producer once more). On emu the guest's half has no fence on the
// host: Unicorn translates MFENCE, LOCK-prefixed instructions and XCHG without host barriers (its
// blocks never carry CF_PARALLEL), so the vCPU thread's store can still sit in its store buffer
// when its load runs. Both sides may then read the other's old index and each decide the other
// needs no event: the guest sleeps on a response the backend never signals (seen: the kit's
// blkfront at depth 1 hung about one run in three once the backend polled).
//
// The cure costs nothing on the common path: only a decision "no event needed" is confirmed,
// by running the check again with the guest stopped between instructions
// (Accelerator::ExcludeGuestAtomics: the run token's lock drains the vCPU's stores, and the
// guest, resumed, sees everything stored before). Real CPUs need none of it (no exclusion).
#ifndef XENKVM_COMPONENTS_XENBUS_GUEST_ORDER_H_
#define XENKVM_COMPONENTS_XENBUS_GUEST_ORDER_H_

#include <memory>

#include "components/accel/accelerator.h"

namespace xenkvm::xenbus {

class GuestOrder {
 public:
  // `accelerator` may be null (tests without a guest): checks are then run once.
  explicit GuestOrder(accel::Accelerator* accelerator) : accelerator_(accelerator) {}

  // `check()` (true: the other side needs an event / has more work), once; if false, once more
  // with the guest stopped when its fences are not real. Call after the full fence.
  template <typename Check>
  bool Confirm(const Check& check) const {
    if (check()) return true;
    if (accelerator_ == nullptr) return false;
    const std::unique_ptr<accel::GuestAtomicsExclusion> stopped = accelerator_->ExcludeGuestAtomics();
    return stopped != nullptr && check();
  }

 private:
  accel::Accelerator* const accelerator_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_GUEST_ORDER_H_
