// A user as an operator names it: a name from the password database, or UID:GID.
#ifndef XENKVM_COMPONENTS_BASE_USER_H_
#define XENKVM_COMPONENTS_BASE_USER_H_

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"

namespace xenkvm::base {

struct UserIds {
  uid_t uid = 0;
  gid_t gid = 0;
};

// kInvalidArgument naming `user` when it is neither.
absl::StatusOr<UserIds> ResolveUser(const std::string& user);

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_USER_H_
