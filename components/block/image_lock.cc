#include "components/block/image_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace xenkvm::block {
namespace {

// The VM a xenkvm-vmm runs (its --name), or "" for other programs.
std::string VmName(const std::vector<std::string>& argv) {
  if (argv.empty() || std::filesystem::path(argv[0]).filename() != "xenkvm-vmm") return "";
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "--name") return argv[i + 1];
  }
  return "guest";
}

std::string DescribeProcess(const std::string& pid) {
  std::ifstream file(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<std::string> argv = absl::StrSplit(raw, '\0', absl::SkipEmpty());
  const std::string program = argv.empty() ? "?" : std::filesystem::path(argv[0]).filename().string();
  const std::string vm = VmName(argv);
  std::string description = absl::StrCat(program, " pid ", pid);
  if (!vm.empty()) absl::StrAppend(&description, " (VM '", vm, "')");
  if (pid == std::to_string(getpid())) absl::StrAppend(&description, " itself");
  return description;
}

}  // namespace

std::string DescribeImageUsers(int fd) {
  struct stat image {};
  if (fstat(fd, &image) != 0) return "";
  std::vector<std::string> users;
  std::error_code error;
  for (const auto& process : std::filesystem::directory_iterator("/proc", error)) {
    const std::string pid = process.path().filename().string();
    int number = 0;
    if (!absl::SimpleAtoi(pid, &number)) continue;
    std::error_code fd_error;
    for (const auto& entry : std::filesystem::directory_iterator(process.path() / "fd", fd_error)) {
      if (pid == std::to_string(getpid()) && entry.path().filename() == std::to_string(fd)) continue;
      struct stat other {};
      if (stat(entry.path().c_str(), &other) != 0) continue;
      if (other.st_dev == image.st_dev && other.st_ino == image.st_ino && S_ISREG(image.st_mode) == S_ISREG(other.st_mode) &&
          other.st_rdev == image.st_rdev) {
        users.push_back(DescribeProcess(pid));
        break;
      }
    }
  }
  return absl::StrJoin(users, ", ");
}

absl::Status LockImage(int fd, const std::string& path, bool exclusive) {
  struct flock lock {};
  lock.l_type = exclusive ? F_WRLCK : F_RDLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = kImageLockByte;
  lock.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &lock) == 0) return absl::OkStatus();
  if (errno != EAGAIN && errno != EACCES) {
    return absl::InternalError(absl::StrCat("disk image ", path, ": cannot lock it: ", std::strerror(errno)));
  }
  std::string users = DescribeImageUsers(fd);
  return absl::FailedPreconditionError(absl::StrCat(
      "disk image ", path, " is in use", exclusive ? "" : " read-write", users.empty() ? "" : " by ", users,
      exclusive ? ": a read-write disk needs it to itself (stop that VM or detach its disk first)"
                : ": a read-only disk can share it only with other read-only users"));
}

}  // namespace xenkvm::block
