// memory_op: placing Xen's pages in the guest's physical map (add_to_physmap, _batch) and the
// domain's memory map.
#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

// Extra pages that neither the shared info nor a grant-table frame occupies any more go away.
void Dispatcher::ReleaseUnusedFrames() {
  const std::optional<uint64_t> shared_info_gpa = s_.pages.shared_info_gpa();
  s_.extra_frames.ReleaseUnused([&](uint64_t gfn) {
    return (shared_info_gpa && *shared_info_gpa >> 12 == gfn) || s_.grant_table.HoldsFrameAt(gfn);
  });
}

int64_t Dispatcher::AddToPhysmap(HypercallCaller& caller, uint16_t domid, uint32_t space, uint64_t index, uint64_t gpfn) {
  if (!OwnDomain(domid)) return XenError(XEN_ESRCH);
  switch (space) {
    case XENMAPSPACE_shared_info: {
      if (index != 0) return XenError(XEN_EINVAL);
      absl::MutexLock placing(&physmap_mutex_);
      if (int64_t backed = s_.extra_frames.Back(gpfn); backed != 0) return backed;
      absl::StatusOr<uint8_t*> host = memory_.HostAddress(memory::GuestAddress(gpfn << 12), kPageSize);
      if (!host.ok()) return XenError(XEN_EINVAL);
      absl::Cleanup release = [this] { ReleaseUnusedFrames(); };
      s_.events.LatchLongMode(caller.long_mode);
      s_.pages.PlaceSharedInfo(*host, gpfn << 12);
      s_.delivery.SharedInfoPlaced(gpfn);
      s_.vcpus.SharedInfoPlaced();
      return 0;
    }
    case XENMAPSPACE_grant_table:
      if (index & XENMAPIDX_grant_table_status) return XenError(XEN_EINVAL);  // v1 has no status frames
      if (index >= config_.gnttab_max_frames) return XenError(XEN_EINVAL);
      {
        absl::MutexLock placing(&physmap_mutex_);
        if (int64_t backed = s_.extra_frames.Back(gpfn); backed != 0) return backed;
        const int64_t mapped = s_.grant_table.MapFrame(static_cast<uint32_t>(index), gpfn);
        ReleaseUnusedFrames();
        return mapped;
      }
    case XENMAPSPACE_gmfn:
    case XENMAPSPACE_gmfn_range:
      return XenError(XEN_EOPNOTSUPP);
    case XENMAPSPACE_gmfn_foreign:
    case XENMAPSPACE_dev_mmio:
      return XenError(XEN_EPERM);
    default:
      return XenError(XEN_EINVAL);
  }
}

int64_t Dispatcher::MemoryOp(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case XENMEM_add_to_physmap: {
      // 64-bit: domid@0 size@2 space@4 idx@8 gpfn@16; 32-bit: idx@8 gpfn@12.
      std::optional<uint16_t> domid = caller.access.ReadObject<uint16_t>(arg);
      std::optional<uint32_t> space = caller.access.ReadObject<uint32_t>(arg + 4);
      std::optional<uint64_t> index = caller.ReadWord(arg + 8);
      std::optional<uint64_t> gpfn = caller.ReadWord(arg + 8 + caller.word_size());
      if (!domid || !space || !index || !gpfn) return XenError(XEN_EFAULT);
      return AddToPhysmap(caller, *domid, *space, *index, *gpfn);
    }
    case XENMEM_add_to_physmap_batch: {
      // domid@0 space@2 size@4 u@6, then three handles: idxs, gpfns, errs.
      struct Header {
        uint16_t domid, space, size, extra;
      };
      std::optional<Header> header = caller.access.ReadObject<Header>(arg);
      std::optional<uint64_t> idxs = caller.ReadWord(arg + 8);
      std::optional<uint64_t> gpfns = caller.ReadWord(arg + 8 + caller.word_size());
      std::optional<uint64_t> errs = caller.ReadWord(arg + 8 + 2 * caller.word_size());
      if (!header || !idxs || !gpfns || !errs) return XenError(XEN_EFAULT);
      if (header->extra != 0) return XenError(XEN_EINVAL);
      for (uint16_t i = 0; i < header->size; ++i) {
        std::optional<uint64_t> index = caller.ReadWord(*idxs + i * caller.word_size());
        std::optional<uint64_t> gpfn = caller.ReadWord(*gpfns + i * caller.word_size());
        if (!index || !gpfn) return XenError(XEN_EFAULT);
        int32_t result = static_cast<int32_t>(AddToPhysmap(caller, header->domid, header->space, *index, *gpfn));
        if (!caller.access.WriteObject(*errs + i * sizeof(int32_t), result)) return XenError(XEN_EFAULT);
      }
      return 0;
    }
    case XENMEM_memory_map:
      return MemoryMap(caller, arg);
    default:
      return XenError(XEN_ENOSYS);
  }
}

// Xen copies min(asked, held) entries and says how many; a domain without a map gets -ENOSYS.
int64_t Dispatcher::MemoryMap(HypercallCaller& caller, uint64_t arg) {
  // struct xen_memory_map: nr_entries@0 (uint32), buffer handle at the next word.
  std::optional<uint32_t> asked = caller.access.ReadObject<uint32_t>(arg);
  std::optional<uint64_t> buffer = caller.ReadWord(arg + caller.word_size());
  if (!asked || !buffer) return XenError(XEN_EFAULT);
  if (config_.memory_map.empty()) return XenError(XEN_ENOSYS);
  struct __attribute__((packed)) E820Entry {
    uint64_t address;
    uint64_t size;
    uint32_t type;
  };
  static_assert(sizeof(E820Entry) == 20, "Xen's struct e820entry is packed");
  const uint32_t count = std::min<uint32_t>(*asked, static_cast<uint32_t>(config_.memory_map.size()));
  for (uint32_t i = 0; i < count; ++i) {
    const MemoryMapEntry& entry = config_.memory_map[i];
    if (!caller.access.WriteObject(*buffer + i * sizeof(E820Entry), E820Entry{entry.address, entry.size, entry.type})) {
      return XenError(XEN_EFAULT);
    }
  }
  return caller.access.WriteObject(arg, count) ? 0 : XenError(XEN_EFAULT);
}

}  // namespace xenkvm::xen
