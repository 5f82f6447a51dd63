// The VMM's system-call allow-list (libseccomp), installed on every thread once the VM is built,
// as Firecracker's seccompiler filters do: a call outside it kills the VMM process (SIGSYS), so
// a guest that takes over the VMM finds no mount, ptrace, execve, new sockets to the outside...
// The list is what xenkvm-vmm uses after its start: the vCPU, backend, timer and gRPC threads,
// hot-plug (opening and locking images), console input, the control and XenStore sockets.
#ifndef XENKVM_VMM_SECCOMP_FILTER_H_
#define XENKVM_VMM_SECCOMP_FILTER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace xenkvm::vmm {

// The system calls allowed, by name.
const std::vector<std::string>& AllowedSystemCalls();

// Installs the filter on every thread of the process (SCMP_FLTATR_CTL_TSYNC), with no_new_privs.
// kFailedPrecondition under AddressSanitizer, whose runtime makes calls of its own (the leak
// check at exit ptraces the process): the VMM then runs unfiltered and says so.
absl::Status InstallSeccompFilter();

// Becomes `user` (a name, or UID:GID) for good: no supplementary groups, real, effective and saved
// IDs all changed, on every thread. For after the VM is built: the VMM keeps the descriptors it
// opened as root (/dev/kvm, guest memory, images, its sockets) and needs nothing new from root.
// kInvalidArgument for an unknown user, kPermissionDenied when the change is refused.
absl::Status DropPrivileges(const std::string& user);

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_SECCOMP_FILTER_H_
