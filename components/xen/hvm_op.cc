// hvm_op: HVM parameters (the event callback route; the toolstack's store and console pages) and
// the per-vCPU upcall vector.
#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {

int64_t Dispatcher::HvmOp(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case HVMOP_set_param:
    case HVMOP_get_param: {
      std::optional<xen_hvm_param_t> param = caller.access.ReadObject<xen_hvm_param_t>(arg);
      if (!param) return XenError(XEN_EFAULT);
      if (!OwnDomain(param->domid)) return XenError(XEN_ESRCH);
      if (command == HVMOP_set_param) {
        if (param->index != HVM_PARAM_CALLBACK_IRQ) return XenError(XEN_EPERM);  // the rest are the toolstack's
        const uint64_t type = param->value >> 56;
        if (type == HVM_PARAM_CALLBACK_TYPE_VECTOR && (param->value & 0xff) < 0x10) return XenError(XEN_EINVAL);
        if (type > HVM_PARAM_CALLBACK_TYPE_VECTOR) return XenError(XEN_EINVAL);
        if (type == HVM_PARAM_CALLBACK_TYPE_GSI && param->value != 0 &&
            (!s_.upcalls.gsi_available() || param->value >= 24)) {
          return XenError(XEN_EINVAL);  // no such GSI (the IOAPIC has 24)
        }
        s_.upcalls.SetCallbackVia(param->value);
        s_.events.LatchLongMode(caller.long_mode);
        s_.delivery.CallbackRouteChanged(param->value);
        s_.upcalls.RaiseAllPending();
        return 0;
      }
      switch (param->index) {
        case HVM_PARAM_CALLBACK_IRQ:
          param->value = s_.upcalls.callback_via();
          break;
        case HVM_PARAM_STORE_PFN:
        case HVM_PARAM_STORE_EVTCHN:
        case HVM_PARAM_CONSOLE_PFN:
        case HVM_PARAM_CONSOLE_EVTCHN: {
          absl::MutexLock lock(&params_mutex_);
          auto it = hvm_params_.find(param->index);
          param->value = it == hvm_params_.end() ? 0 : it->second;
          break;
        }
        default:
          return XenError(XEN_EINVAL);
      }
      return caller.access.WriteObject(arg, *param) ? 0 : XenError(XEN_EFAULT);
    }
    case HVMOP_set_evtchn_upcall_vector: {
      std::optional<xen_hvm_evtchn_upcall_vector_t> upcall =
          caller.access.ReadObject<xen_hvm_evtchn_upcall_vector_t>(arg);
      if (!upcall) return XenError(XEN_EFAULT);
      if (upcall->vector < 0x10) return XenError(XEN_EINVAL);
      if (upcall->vcpu >= s_.vcpus.count()) return XenError(XEN_ENOENT);
      s_.upcalls.SetVcpuVector(upcall->vcpu, upcall->vector);
      s_.delivery.VcpuVectorChanged(upcall->vcpu, upcall->vector);
      s_.upcalls.RaiseAllPending();
      return 0;
    }
    case HVMOP_pagetable_dying:
      return XenError(XEN_ENOSYS);
    default:
      return XenError(XEN_ENOSYS);
  }
}

}  // namespace xenkvm::xen
