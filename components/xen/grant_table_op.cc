#include <vector>

#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

// ---- grant_table_op (version 1; the guest's own table: mapping and copying grants is the
// backends' business, through GrantTable)

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
      const uint32_t asked = op->version;
      op->version = 1;  // what is in use, either way
      if (!caller.access.WriteObject(arg, *op)) return XenError(XEN_EFAULT);
      return asked == 1 ? 0 : XenError(XEN_EOPNOTSUPP);  // version 2 is not offered
    }
    case GNTTABOP_get_version: {
      if (count != 1) return XenError(XEN_EINVAL);
      std::optional<gnttab_get_version_t> op = caller.access.ReadObject<gnttab_get_version_t>(arg);
      if (!op) return XenError(XEN_EFAULT);
      if (!OwnDomain(op->dom)) return XenError(XEN_ESRCH);
      op->version = 1;
      return caller.access.WriteObject(arg, *op) ? 0 : XenError(XEN_EFAULT);
    }
    case GNTTABOP_get_status_frames:
      return XenError(XEN_EINVAL);  // version 1 has no status frames
    default:
      return XenError(XEN_ENOSYS);  // map/unmap/copy/transfer of other domains' grants: a guest has none to use
  }
}

}  // namespace xenkvm::xen
