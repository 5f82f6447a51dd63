// xenkvm's release, printed by every binary's --version.
#ifndef XENKVM_COMPONENTS_BASE_VERSION_H_
#define XENKVM_COMPONENTS_BASE_VERSION_H_

namespace xenkvm::base {

inline constexpr char kVersion[] = "0.7.0";

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_VERSION_H_
