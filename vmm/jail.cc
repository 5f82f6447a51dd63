#include "vmm/jail.h"

#include <dirent.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace xenkvm::vmm {
namespace {

absl::Status Failed(const std::string& what) {
  const int error = errno;
  const std::string message = absl::StrCat("--jail: ", what, ": ", std::strerror(error));
  return error == EPERM || error == EACCES ? absl::PermissionDeniedError(absl::StrCat(message, " (the VMM must start as root)"))
                                           : absl::InternalError(message);
}

size_t ThreadCount() {
  size_t count = 0;
  if (DIR* tasks = opendir("/proc/self/task")) {
    while (dirent* entry = readdir(tasks)) count += entry->d_name[0] != '.';
    closedir(tasks);
  }
  return count;
}

}  // namespace

absl::Status PrepareJail(const std::string& dir) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return absl::FailedPreconditionError("built with a sanitizer, whose runtime reads /proc at exit");
#endif
  struct stat info {};
  if (dir.empty() || dir[0] != '/' || stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("--jail ", dir, ": not an absolute path to an existing directory"));
  }
  if (ThreadCount() != 1) {
    return absl::InternalError("--jail: the mount namespace must be made before any thread starts");
  }
  if (unshare(CLONE_NEWNS) != 0) return Failed("unshare(CLONE_NEWNS)");
  // Nothing done in this namespace reaches the host's, nor the other way round.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return Failed("making / private");
  return absl::OkStatus();
}

absl::Status EnterJail(const std::string& dir) {
  if (mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) != 0) return Failed(absl::StrCat("binding ", dir));
  if (mount(nullptr, dir.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            nullptr) != 0) {
    return Failed(absl::StrCat("remounting ", dir, " read-only"));
  }
  if (chdir(dir.c_str()) != 0) return Failed(absl::StrCat("chdir ", dir));
  // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves DIR alone.
  if (syscall(SYS_pivot_root, ".", ".") != 0) return Failed("pivot_root");
  if (umount2(".", MNT_DETACH) != 0) return Failed("detaching the host's tree");
  if (chdir("/") != 0) return Failed("chdir /");
  return absl::OkStatus();
}

}  // namespace xenkvm::vmm
