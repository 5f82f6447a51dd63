#include <vector>

#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

// ---- grant_table_op: the guest's own table (versions 1 and 2) and copies between its own frames
// and grants (mapping and copying its grants to domain 0 is the backends' business, through
// GrantTable)

int64_t Dispatcher::GrantTableOp(HypercallCaller& caller, uint64_t command, uint64_t arg, uint64_t count) {
  switch (command) {
    case GNTTABOP_query_size: {
      if (count != 1) return XenError(XEN_EINVAL);
      std::optional<gnttab_query_size_t> op = caller.access.ReadObject<gnttab_query_size_t>(arg);
      if (!op) return XenError(XEN_EFAULT);
      if (!OwnDomain(op->dom)) {
        op->status = GNTST_bad_domain;
      } else {
        op->nr_frames = s_.grant_table.frames();
        op->max_nr_frames = s_.grant_table.max_frames();
        op->status = GNTST_okay;
      }
      return caller.access.WriteObject(arg, *op) ? 0 : XenError(XEN_EFAULT);
    }
    case GNTTABOP_setup_table: {
      // {domid_t dom; uint32_t nr_frames; int16_t status; handle frame_list}: the handle and the
      // frame numbers are the caller's word size.
      const uint64_t size = caller.long_mode ? 24 : 16;
      if (count > 16) return XenError(XEN_EINVAL);
      for (uint64_t i = 0; i < count; ++i) {
        const uint64_t at = arg + i * size;
        std::optional<uint16_t> dom = caller.access.ReadObject<uint16_t>(at);
        std::optional<uint32_t> nr_frames = caller.access.ReadObject<uint32_t>(at + 4);
        std::optional<uint64_t> frame_list = caller.ReadWord(at + (caller.long_mode ? 16 : 12));
        if (!dom || !nr_frames || !frame_list) return XenError(XEN_EFAULT);
        int16_t status = GNTST_bad_domain;
        if (OwnDomain(*dom)) {
          std::vector<uint64_t> gfns;
          status = s_.grant_table.Setup(*nr_frames, &gfns);
          for (size_t f = 0; status == GNTST_okay && f < gfns.size(); ++f) {
            const uint64_t where = *frame_list + f * caller.word_size();
            const bool written = caller.long_mode ? caller.access.WriteObject<uint64_t>(where, gfns[f])
                                                  : caller.access.WriteObject<uint32_t>(where, static_cast<uint32_t>(gfns[f]));
            if (!written) return XenError(XEN_EFAULT);
          }
        }
        if (!caller.access.WriteObject<int16_t>(at + 8, status)) return XenError(XEN_EFAULT);
      }
      return 0;
    }
    case GNTTABOP_set_version: {
      if (count != 1) return XenError(XEN_EINVAL);
      std::optional<gnttab_set_version_t> op = caller.access.ReadObject<gnttab_set_version_t>(arg);
      if (!op) return XenError(XEN_EFAULT);
      int64_t set = 0;
      {
        absl::MutexLock placing(&physmap_mutex_);
        set = s_.grant_table.SetVersion(op->version);
        ReleaseUnusedFrames();  // status frames outside RAM go with version 2
      }
      op->version = s_.grant_table.version();  // what is in use, either way
      if (!caller.access.WriteObject(arg, *op)) return XenError(XEN_EFAULT);
      return set;
    }
    case GNTTABOP_get_version: {
      if (count != 1) return XenError(XEN_EINVAL);
      std::optional<gnttab_get_version_t> op = caller.access.ReadObject<gnttab_get_version_t>(arg);
      if (!op) return XenError(XEN_EFAULT);
      if (!OwnDomain(op->dom)) return XenError(XEN_ESRCH);
      op->version = s_.grant_table.version();
      return caller.access.WriteObject(arg, *op) ? 0 : XenError(XEN_EFAULT);
    }
    case GNTTABOP_get_status_frames:
      return GetStatusFrames(caller, arg, count);
    case GNTTABOP_copy:
      return GrantCopy(caller, arg, count);
    default:
      return XenError(XEN_ENOSYS);  // map/unmap/transfer of other domains' grants: a guest has none to use
  }
}

// {uint32 nr_frames; domid_t dom; int16 status; handle frame_list (uint64 frames)}.
int64_t Dispatcher::GetStatusFrames(HypercallCaller& caller, uint64_t arg, uint64_t count) {
  if (count != 1) return XenError(XEN_EINVAL);
  if (s_.grant_table.version() != 2) return XenError(XEN_EINVAL);  // version 1 has no status frames
  std::optional<uint32_t> asked = caller.access.ReadObject<uint32_t>(arg);
  std::optional<uint16_t> dom = caller.access.ReadObject<uint16_t>(arg + 4);
  std::optional<uint64_t> list = caller.ReadWord(arg + 8);
  if (!asked || !dom || !list) return XenError(XEN_EFAULT);
  int16_t status = GNTST_bad_domain;
  if (OwnDomain(*dom)) {
    std::vector<uint64_t> gfns;
    status = s_.grant_table.StatusFrames(*asked, &gfns);
    for (size_t i = 0; status == GNTST_okay && i < gfns.size(); ++i) {
      if (!caller.access.WriteObject<uint64_t>(*list + i * 8, gfns[i])) status = GNTST_bad_virt_addr;
    }
  }
  return caller.access.WriteObject<int16_t>(arg + 6, status) ? 0 : XenError(XEN_EFAULT);
}

// GNTTABOP_copy between the guest's own frames (gmfn, DOMID_SELF) and grants it made to itself
// (gref): struct gnttab_copy {source, dest: {union {ref, gmfn}, domid, offset}; len; flags; status}
// (64-bit: the sides @0 and @16, len @32, flags @34, status @36, 40 bytes; 32-bit: @0, @8, @16,
// @18, @20, 24 bytes). Each op's status is written back; the call fails only for a bad op array.
int64_t Dispatcher::GrantCopy(HypercallCaller& caller, uint64_t arg, uint64_t count) {
  // Xen would preempt a long batch and continue it; xenkvm bounds one call instead.
  constexpr uint64_t kMaxCopiesPerCall = 1 << 16;
  if (count > kMaxCopiesPerCall) return XenError(XEN_EINVAL);
  const uint64_t side_size = caller.long_mode ? 16 : 8;
  const uint64_t op_size = caller.long_mode ? 40 : 24;
  std::vector<uint8_t> buffer(kPageSize);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t at = arg + i * op_size;
    struct Side {
      uint64_t frame_or_ref = 0;
      uint16_t domid = 0, offset = 0;
    } side[2];
    for (int s = 0; s < 2; ++s) {
      std::optional<uint64_t> u = caller.ReadWord(at + s * side_size);
      std::optional<uint16_t> domid = caller.access.ReadObject<uint16_t>(at + s * side_size + caller.word_size());
      std::optional<uint16_t> offset = caller.access.ReadObject<uint16_t>(at + s * side_size + caller.word_size() + 2);
      if (!u || !domid || !offset) return XenError(XEN_EFAULT);
      side[s] = Side{*u, *domid, *offset};
    }
    std::optional<uint16_t> length = caller.access.ReadObject<uint16_t>(at + 2 * side_size);
    std::optional<uint16_t> flags = caller.access.ReadObject<uint16_t>(at + 2 * side_size + 2);
    if (!length || !flags) return XenError(XEN_EFAULT);
    const int16_t status =
        *length > kPageSize
            ? GNTST_bad_copy_arg
            : CopyOne(side[0].frame_or_ref, side[0].domid, side[0].offset, (*flags & GNTCOPY_source_gref) != 0,
                      side[1].frame_or_ref, side[1].domid, side[1].offset, (*flags & GNTCOPY_dest_gref) != 0,
                      std::span(buffer.data(), *length));
    if (!caller.access.WriteObject<int16_t>(at + 2 * side_size + 4, status)) return XenError(XEN_EFAULT);
  }
  return 0;
}

int16_t Dispatcher::CopyOne(uint64_t source, uint16_t source_domid, uint16_t source_offset, bool source_gref,
                            uint64_t dest, uint16_t dest_domid, uint16_t dest_offset, bool dest_gref,
                            std::span<uint8_t> bytes) {
  if (source_offset + bytes.size() > kPageSize || dest_offset + bytes.size() > kPageSize) return GNTST_bad_copy_arg;
  // A grant names another domain's table (there is none but the guest's own); a frame of another
  // domain is not the guest's to name.
  for (const auto& [gref, domid] : {std::pair{source_gref, source_domid}, std::pair{dest_gref, dest_domid}}) {
    if (!OwnDomain(domid)) return gref ? GNTST_bad_domain : GNTST_permission_denied;
  }
  auto own_frame = [this](uint64_t gfn, uint16_t offset, size_t size) -> std::optional<memory::GuestAddress> {
    if (gfn > (~uint64_t{0} >> 12) || s_.reservation.IsGivenBack(gfn) || s_.grant_table.HoldsFrameAt(gfn)) {
      return std::nullopt;
    }
    const memory::GuestAddress where((gfn << 12) + offset);
    if (!memory_.IsValidRange(memory::GuestAddress(gfn << 12), kPageSize) || !memory_.IsValidRange(where, size ? size : 1)) {
      return std::nullopt;
    }
    return where;
  };
  if (source_gref) {
    if (int16_t read = s_.grant_table.Copy(static_cast<uint32_t>(source), source_offset, bytes, false, config_.domid);
        read != GNTST_okay) {
      return read;
    }
  } else {
    std::optional<memory::GuestAddress> from = own_frame(source, source_offset, bytes.size());
    if (!from) return GNTST_bad_page;
    if (!bytes.empty() && !memory_.Read(*from, bytes).ok()) return GNTST_bad_page;
  }
  if (dest_gref) return s_.grant_table.Copy(static_cast<uint32_t>(dest), dest_offset, bytes, true, config_.domid);
  std::optional<memory::GuestAddress> to = own_frame(dest, dest_offset, bytes.size());
  if (!to) return GNTST_bad_page;
  if (!bytes.empty() && !memory_.Write(*to, bytes).ok()) return GNTST_bad_page;
  return GNTST_okay;
}

}  // namespace xenkvm::xen
