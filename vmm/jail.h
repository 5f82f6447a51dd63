// The VMM confined to an empty root (the other half of Firecracker's jailer, beside the
// unprivileged user and the seccomp filter): once the VM is built, its files and sockets are open
// and nothing else on the host need be reachable. Two steps, because a mount namespace is per
// thread while the root directory is shared by a process's threads:
//   PrepareJail  at the very start, while the VMM has a single thread: a private mount namespace,
//                which every thread made later inherits;
//   EnterJail    once built: DIR bound read-only (nosuid, nodev, noexec) as the namespace's root,
//                the host's tree detached (pivot_root), for every thread at once.
// Needs root (CAP_SYS_ADMIN). Files the VMM needs later are handed over (base/fd_handover.h).
#ifndef XENKVM_VMM_JAIL_H_
#define XENKVM_VMM_JAIL_H_

#include <string>

#include "absl/status/status.h"

namespace xenkvm::vmm {

// kInvalidArgument when `dir` is not an absolute path to an existing directory; kInternal when the
// process already has threads; kPermissionDenied without the privilege. kFailedPrecondition in a
// sanitizer build, whose runtime reads /proc and its own binary at exit (the leak check, the
// symbolizer): the VMM then runs unconfined and says so, as it runs without its seccomp filter.
absl::Status PrepareJail(const std::string& dir);
absl::Status EnterJail(const std::string& dir);

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_JAIL_H_
