// The Xen version a VM shows its guest (XENVER_version: major << 16 | minor), as the VMM's flag,
// the daemon's VM config and xl.cfg give it: one parser and one rule for all of them.
#ifndef XENKVM_COMPONENTS_XEN_VERSION_H_
#define XENKVM_COMPONENTS_XEN_VERSION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xenkvm::xen {

// "4.17", "0x40011" (major << 16 | minor) or "off" (0: no Xen interface). Major 3..255.
absl::StatusOr<uint32_t> ParseXenVersion(absl::string_view text);
// kInvalidArgument unless `version` is 0 (off) or a major 3..255 with any minor.
absl::Status CheckXenVersion(uint32_t version);

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_VERSION_H_
