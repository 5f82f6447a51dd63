#include "components/base/user.h"

#include <pwd.h>

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace xenkvm::base {

absl::StatusOr<UserIds> ResolveUser(const std::string& user) {
  if (passwd* entry = getpwnam(user.c_str()); entry != nullptr) return UserIds{entry->pw_uid, entry->pw_gid};
  UserIds ids;
  std::vector<std::string> parts = absl::StrSplit(user, ':');
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &ids.uid) || !absl::SimpleAtoi(parts[1], &ids.gid)) {
    return absl::InvalidArgumentError(absl::StrCat("user \"", user, "\": no such user (give a name or UID:GID)"));
  }
  return ids;
}

}  // namespace xenkvm::base
