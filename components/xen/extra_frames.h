// Backing for the frames a guest places with XENMEM_add_to_physmap (shared info, grant-table
// frames). Xen puts its own page at whatever guest frame the guest names; Linux PVH names
// unpopulated addresses outside RAM (XEN_UNPOPULATED_ALLOC). A frame in RAM is used as it is; a
// frame outside RAM gets an extra page (GuestMemory) that the accelerator shows to the guest, and
// loses it again once nothing is placed there.
#ifndef XENKVM_COMPONENTS_XEN_EXTRA_FRAMES_H_
#define XENKVM_COMPONENTS_XEN_EXTRA_FRAMES_H_

#include <cstdint>
#include <functional>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::xen {

class ExtraFrames {
 public:
  // Guest-physical addresses below this are placeable (a 40-bit physical address width).
  static constexpr uint64_t kAddressLimit = uint64_t{1} << 40;

  ExtraFrames(memory::GuestMemory& memory, accel::Accelerator& accelerator)
      : memory_(memory), accelerator_(accelerator) {}

  // Makes guest frame `gfn` usable for a Xen page: 0 when it is RAM or now has an extra page;
  // Xen's -EINVAL for a frame beyond kAddressLimit or among the interrupt controllers' and
  // firmware's pages (0xfec00000..4 GiB), -ENOMEM when no extra page is left.
  int64_t Back(uint64_t gfn);
  // Takes away every extra page whose frame `in_use` no longer claims.
  void ReleaseUnused(const std::function<bool(uint64_t gfn)>& in_use);
  // Frames that have an extra page now.
  std::set<uint64_t> frames() const;

 private:
  memory::GuestMemory& memory_;
  accel::Accelerator& accelerator_;
  mutable absl::Mutex mutex_;
  std::set<uint64_t> frames_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_EXTRA_FRAMES_H_
