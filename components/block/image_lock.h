// Image locks as QEMU takes them: one byte of the image locked with an open-file-description
// (OFD) lock, shared by read-only users and exclusive for a read-write one, so two VMs (in any
// VMMs, under any daemons) never write one image, nor read it while another writes. The lock
// lives as long as the file descriptor. A refusal names the holders.
#ifndef XENKVM_COMPONENTS_BLOCK_IMAGE_LOCK_H_
#define XENKVM_COMPONENTS_BLOCK_IMAGE_LOCK_H_

#include <string>

#include "absl/status/status.h"

namespace xenkvm::block {

// The byte locked (beyond any header a format might have; locks past the end are allowed).
inline constexpr long kImageLockByte = 0x7e;

// Takes the lock on `fd` (open on `path`): exclusive when `exclusive`, else shared.
// kFailedPrecondition when another user holds a conflicting one, naming it (a process with the
// image open: its pid, and the VM's name for a xenkvm-vmm).
absl::Status LockImage(int fd, const std::string& path, bool exclusive);

// The processes other than the caller's file descriptor `fd` that have the same file open,
// described for an error message ("xenkvm-vmm pid 42 (VM 'web')"); empty when none is found.
std::string DescribeImageUsers(int fd);

}  // namespace xenkvm::block

#endif  // XENKVM_COMPONENTS_BLOCK_IMAGE_LOCK_H_
