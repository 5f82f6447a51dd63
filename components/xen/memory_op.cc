// memory_op: placing Xen's pages in the guest's physical map (add_to_physmap, _batch) and the
// domain's memory map.
#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

// Where a reservation op resumes sits above the op in the command (Xen's kMemopExtentShift; the
// public header shows it only to Xen and its tools).
constexpr uint32_t kMemopExtentShift = 6;
constexpr uint64_t kMemopCommandMask = (uint64_t{1} << kMemopExtentShift) - 1;

}  // namespace

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
    case XENMAPSPACE_grant_table: {
      // A status frame (v2 only) when XENMAPIDX_grant_table_status is set, else a grant frame.
      const bool status = (index & XENMAPIDX_grant_table_status) != 0;
      const uint64_t frame = index & ~uint64_t{XENMAPIDX_grant_table_status};
      if (frame >= config_.gnttab_max_frames || (status && s_.grant_table.version() != 2)) return XenError(XEN_EINVAL);
      absl::MutexLock placing(&physmap_mutex_);
      if (int64_t backed = s_.extra_frames.Back(gpfn); backed != 0) return backed;
      const int64_t mapped = status ? s_.grant_table.MapStatusFrame(static_cast<uint32_t>(frame), gpfn)
                                    : s_.grant_table.MapFrame(static_cast<uint32_t>(frame), gpfn);
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
  // The reservation ops carry where to resume in the command's upper bits (kMemopExtentShift).
  const uint64_t op = command & kMemopCommandMask;
  const uint64_t start_extent = command >> kMemopExtentShift;
  switch (op) {
    case XENMEM_increase_reservation:
    case XENMEM_decrease_reservation:
    case XENMEM_populate_physmap:
      return Reservation(caller, op, start_extent, arg);
    case XENMEM_current_reservation:
    case XENMEM_maximum_reservation: {
      if (start_extent != 0) return XenError(XEN_EINVAL);
      std::optional<uint16_t> domid = caller.access.ReadObject<uint16_t>(arg);
      if (!domid) return XenError(XEN_EFAULT);
      if (!OwnDomain(*domid)) return XenError(XEN_ESRCH);
      return static_cast<int64_t>(op == XENMEM_current_reservation ? s_.reservation.current_pages()
                                                                   : s_.reservation.max_pages());
    }
    default:
      break;
  }
  if (start_extent != 0) return XenError(XEN_ENOSYS);
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

// increase_reservation, decrease_reservation, populate_physmap: struct xen_memory_reservation
// {extent_start handle, nr_extents, extent_order, mem_flags, domid} (64-bit: @0 @8 @16 @20 @24;
// 32-bit: @0 @4 @8 @12 @16); the extents are guest frame numbers of the caller's word size. As Xen,
// the answer is the number of extents done (from start_extent), stopping at the first that fails;
// nothing is an error code. For a translated guest xenkvm's increase_reservation refills frames as
// populate_physmap does.
int64_t Dispatcher::Reservation(HypercallCaller& caller, uint64_t op, uint64_t start_extent, uint64_t arg) {
  constexpr uint32_t kMaxExtentOrder = 9;  // Xen's limit for an unprivileged domain (2 MiB)
  const int64_t none_done = static_cast<int64_t>(start_extent);
  std::optional<uint64_t> extents = caller.ReadWord(arg);
  std::optional<uint64_t> count = caller.ReadWord(arg + caller.word_size());
  const uint64_t order_at = caller.long_mode ? 16 : 8;
  std::optional<uint32_t> order = caller.access.ReadObject<uint32_t>(arg + order_at);
  std::optional<uint16_t> domid = caller.access.ReadObject<uint16_t>(arg + order_at + 8);
  if (!extents || !count || !order || !domid) return none_done;
  if (*count > (UINT32_MAX >> kMemopExtentShift) || start_extent >= *count) return none_done;
  if (!OwnDomain(*domid) || *order > kMaxExtentOrder) return none_done;
  const uint64_t frames = uint64_t{1} << *order;
  absl::MutexLock placing(&physmap_mutex_);  // Xen's pages stay where they are meanwhile
  const std::optional<uint64_t> shared_info_gpa = s_.pages.shared_info_gpa();
  uint64_t done = start_extent;
  for (; done < *count; ++done) {
    std::optional<uint64_t> gfn = caller.ReadWord(*extents + done * caller.word_size());
    if (!gfn || (*gfn & (frames - 1)) != 0 || *gfn > (ExtraFrames::kAddressLimit >> 12)) break;
    bool held_by_xen = false;
    for (uint64_t frame = *gfn; frame < *gfn + frames && !held_by_xen; ++frame) {
      held_by_xen = (shared_info_gpa && *shared_info_gpa >> 12 == frame) || s_.grant_table.HoldsFrameAt(frame);
    }
    if (held_by_xen) break;
    const bool ok = op == XENMEM_decrease_reservation ? s_.reservation.GiveBack(*gfn, frames)
                                                      : s_.reservation.Refill(*gfn, frames);
    if (!ok) break;
  }
  return static_cast<int64_t>(done);
}

}  // namespace xenkvm::xen
