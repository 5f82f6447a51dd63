// xen_version: what the guest is told about its hypervisor.
#include <array>
#include <cstring>

#include "components/xen/dispatcher.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

// Copies a NUL-padded string into a fixed-size guest buffer.
template <size_t N>
std::array<char, N> FixedString(const char* text) {
  std::array<char, N> out{};
  std::strncpy(out.data(), text, N - 1);
  return out;
}

}  // namespace

int64_t Dispatcher::XenVersion(HypercallCaller& caller, uint64_t command, uint64_t arg) {
  switch (command) {
    case XENVER_version:
      return config_.version;
    case XENVER_extraversion: {
      auto extra = FixedString<XEN_EXTRAVERSION_LEN>(".0-xenkvm");
      return caller.access.WriteObject(arg, extra) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_compile_info: {
      xen_compile_info_t info{};
      std::strncpy(info.compiler, "xenkvm (Xen interface emulated on KVM)", sizeof(info.compiler) - 1);
      std::strncpy(info.compile_by, "xenkvm", sizeof(info.compile_by) - 1);
      std::strncpy(info.compile_domain, "xenkvm", sizeof(info.compile_domain) - 1);
      std::strncpy(info.compile_date, __DATE__, sizeof(info.compile_date) - 1);
      return caller.access.WriteObject(arg, info) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_capabilities: {
      auto capabilities = FixedString<XEN_CAPABILITIES_INFO_LEN>("hvm-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p");
      return caller.access.WriteObject(arg, capabilities) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_changeset: {
      auto changeset = FixedString<XEN_CHANGESET_INFO_LEN>("xenkvm");
      return caller.access.WriteObject(arg, changeset) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_platform_parameters: {
      // virt_start: where Xen would sit in a PV guest's address space; HVM guests own it all.
      uint64_t virt_start = caller.long_mode ? 0xffff800000000000ull : 0xf5800000ull;
      if (caller.long_mode) return caller.access.WriteObject(arg, virt_start) ? 0 : XenError(XEN_EFAULT);
      return caller.access.WriteObject(arg, static_cast<uint32_t>(virt_start)) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_get_features: {
      std::optional<xen_feature_info_t> info = caller.access.ReadObject<xen_feature_info_t>(arg);
      if (!info) return XenError(XEN_EFAULT);
      info->submap = 0;
      if (info->submap_idx == 0) {
        info->submap = (1u << XENFEAT_writable_page_tables) | (1u << XENFEAT_writable_descriptor_tables) |
                       (1u << XENFEAT_auto_translated_physmap) | (1u << XENFEAT_hvm_callback_vector) |
                       (1u << XENFEAT_hvm_safe_pvclock);
      }
      return caller.access.WriteObject(arg, *info) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_pagesize:
      return kPageSize;
    case XENVER_guest_handle: {
      std::array<uint8_t, 16> handle{};  // the domain's UUID; xenkvm gives each VM the domid in it
      handle[15] = static_cast<uint8_t>(config_.domid);
      handle[14] = static_cast<uint8_t>(config_.domid >> 8);
      return caller.access.WriteObject(arg, handle) ? 0 : XenError(XEN_EFAULT);
    }
    case XENVER_commandline:
    case XENVER_build_id:
      return XenError(XEN_EPERM);  // Xen's own command line and build id are for dom0
    default:
      return XenError(XEN_ENOSYS);
  }
}

}  // namespace xenkvm::xen
