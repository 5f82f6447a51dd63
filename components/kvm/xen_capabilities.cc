#include "components/kvm/xen_capabilities.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "components/kvm/xen_abi.h"

namespace xenkvm::kvm {
namespace {

struct CapabilityInfo {
  XenCapability capability;
  absl::string_view name;
  absl::string_view minimum_linux;
};

constexpr CapabilityInfo kCapabilities[] = {
    {XenCapability::kHypercallMsr, "HYPERCALL_MSR", "4.14"},
    {XenCapability::kInterceptHypercall, "INTERCEPT_HCALL", "5.12"},
    {XenCapability::kSharedInfo, "SHARED_INFO", "5.12"},
    {XenCapability::kRunstate, "RUNSTATE", "5.12"},
    {XenCapability::kEvtchn2Level, "EVTCHN_2LEVEL", "5.17"},
    {XenCapability::kEvtchnSend, "EVTCHN_SEND", "5.19"},
    {XenCapability::kRunstateUpdateFlag, "RUNSTATE_UPDATE_FLAG", "6.2"},
    {XenCapability::kPvclockTscUnstable, "PVCLOCK_TSC_UNSTABLE", "6.8"},
    {XenCapability::kSharedInfoHva, "SHARED_INFO_HVA", "6.9"},
};

static_assert(static_cast<uint32_t>(XenCapability::kEvtchnSend) == kXenCapEvtchnSend);
static_assert(static_cast<uint32_t>(XenCapability::kSharedInfoHva) == kXenCapSharedInfoHva);

const CapabilityInfo* Find(XenCapability capability) {
  for (const CapabilityInfo& info : kCapabilities) {
    if (info.capability == capability) return &info;
  }
  return nullptr;
}

}  // namespace

absl::string_view XenCapabilities::Name(XenCapability capability) {
  const CapabilityInfo* info = Find(capability);
  return info != nullptr ? info->name : "UNKNOWN";
}

absl::string_view XenCapabilities::MinimumLinux(XenCapability capability) {
  const CapabilityInfo* info = Find(capability);
  return info != nullptr ? info->minimum_linux : "?";
}

absl::Status XenCapabilities::Require(XenCapability capability, absl::string_view what) const {
  if (Has(capability)) return absl::OkStatus();
  std::string reason =
      empty() ? "this kernel reports no Xen support at all (KVM_CAP_XEN_HVM is 0: built without "
                "CONFIG_KVM_XEN?)"
              : absl::StrCat("this kernel reports KVM_CAP_XEN_HVM = ", ToString());
  return absl::FailedPreconditionError(absl::StrCat(what, " needs KVM's Xen capability ",
                                                    Name(capability), " (Linux ",
                                                    MinimumLinux(capability), "+); ", reason));
}

uint32_t XenCapabilities::ConfigFlags() const { return bits_ & kXenConfigFlagsAccepted; }

std::string XenCapabilities::ToString() const {
  std::vector<std::string> names;
  uint32_t known = 0;
  for (const CapabilityInfo& info : kCapabilities) {
    known |= static_cast<uint32_t>(info.capability);
    if (Has(info.capability)) names.emplace_back(info.name);
  }
  if (uint32_t unknown = bits_ & ~known; unknown != 0) {
    names.push_back(absl::StrCat("0x", absl::Hex(unknown)));
  }
  return names.empty() ? "none" : absl::StrJoin(names, "|");
}

}  // namespace xenkvm::kvm
