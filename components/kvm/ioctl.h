// Internal: ioctl with EINTR retry and a Status naming the request.
#ifndef XENKVM_COMPONENTS_KVM_IOCTL_H_
#define XENKVM_COMPONENTS_KVM_IOCTL_H_

#include <sys/ioctl.h>

#include <cerrno>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "components/base/status.h"

namespace xenkvm::kvm::internal {

template <typename Arg>
absl::StatusOr<int> Ioctl(int fd, unsigned long request, const char* name, Arg arg) {
  int result;
  do {
    result = ::ioctl(fd, request, arg);
  } while (result < 0 && errno == EINTR);
  if (result < 0) return base::ErrnoStatus(absl::StrCat("ioctl(", name, ")"));
  return result;
}

}  // namespace xenkvm::kvm::internal

// XENKVM_KVM_IOCTL(fd, KVM_CREATE_VM, 0): the request's name goes into the error message.
#define XENKVM_KVM_IOCTL(fd, request, arg) ::xenkvm::kvm::internal::Ioctl(fd, request, #request, arg)

#endif  // XENKVM_COMPONENTS_KVM_IOCTL_H_
