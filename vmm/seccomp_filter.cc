#include "vmm/seccomp_filter.h"

#include <sys/socket.h>

#include <grp.h>
#include <pwd.h>
#include <seccomp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/user.h"
#include "absl/strings/str_split.h"

namespace xenkvm::vmm {

const std::vector<std::string>& AllowedSystemCalls() {
  static const std::vector<std::string>* calls = new std::vector<std::string>{
      // memory and threads
      "brk", "mmap", "munmap", "mprotect", "madvise", "mremap", "clone", "clone3", "set_robust_list", "rseq",
      "set_tid_address", "exit", "exit_group", "futex", "sched_yield", "sched_getaffinity", "sched_getparam",
      "sched_getscheduler", "gettid", "getpid", "tgkill", "prctl", "nanosleep", "clock_nanosleep", "clock_gettime",
      "memfd_create", "ftruncate", "getrandom", "restart_syscall", "membarrier", "getcpu",
      // signals (SIGTERM ends the VM; kicks reach vCPU threads)
      "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack",
      // files: images (hot-plug, locks, the holder's name from /proc), the status file, logs
      "openat", "close", "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "preadv2", "pwritev",
      "lseek", "fcntl", "fstat", "newfstatat", "statx", "getdents64", "readlink", "readlinkat", "fdatasync", "fsync",
      "fallocate", "rename", "renameat", "renameat2", "unlink", "unlinkat", "access", "faccessat", "faccessat2", "dup",
      "dup2", "dup3",
      // event loops
      "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "timerfd_create", "timerfd_settime",
      "timerfd_gettime", "poll", "ppoll", "pipe2",
      // xen-disk's I/O engine (its kernel workers are not bound by this filter, and need not be)
      "io_uring_setup", "io_uring_enter", "io_uring_register",
      // the accelerator (KVM ioctls) and block devices (BLKGETSIZE64)
      "ioctl",
      // the control and XenStore sockets, already bound: connections come in
      "accept4", "recvmsg", "sendmsg", "recvfrom", "sendto", "getsockname", "getpeername", "getsockopt",
      "setsockopt", "shutdown",
      // the C library's own
      "uname", "prlimit64", "getuid", "geteuid", "getgid", "getegid",
  };
  return *calls;
}

absl::Status DropPrivileges(const std::string& user) {
  absl::StatusOr<base::UserIds> ids = base::ResolveUser(user);
  if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("--run-as: ", ids.status().message()));
  const uid_t uid = ids->uid;
  const gid_t gid = ids->gid;
  if (uid == 0) return absl::InvalidArgumentError(absl::StrCat("--run-as ", user, ": that is root"));
  if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("--run-as ", user, ": cannot change to it (", std::strerror(errno), "; the VMM must start as root)"));
  }
  uid_t real = 0, effective = 0, saved = 0;
  if (getresuid(&real, &effective, &saved) != 0 || real != uid || effective != uid || saved != uid) {
    return absl::PermissionDeniedError(absl::StrCat("--run-as ", user, ": the change did not take"));
  }
  return absl::OkStatus();
}

absl::Status InstallSeccompFilter() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return absl::FailedPreconditionError("built with a sanitizer, whose runtime needs system calls of its own");
#else
  scmp_filter_ctx filter = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (filter == nullptr) return absl::InternalError("seccomp_init failed");
  absl::Status status = absl::OkStatus();
  for (const std::string& name : AllowedSystemCalls()) {
    const int number = seccomp_syscall_resolve_name(name.c_str());
    if (number == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int error = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 0); error != 0) {
      status = absl::InternalError(absl::StrCat("seccomp_rule_add(", name, "): ", std::strerror(-error)));
      break;
    }
  }
  // A hot-plugged vif's tap is brought up through an AF_INET datagram socket's interface ioctls
  // (components/net/tap.cc); no other socket may be made.
  if (status.ok()) {
    if (int error = seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(socket), 2, SCMP_A0(SCMP_CMP_EQ, AF_INET),
                                     SCMP_A1(SCMP_CMP_EQ, SOCK_DGRAM | SOCK_CLOEXEC));
        error != 0) {
      status = absl::InternalError(absl::StrCat("seccomp_rule_add(socket): ", std::strerror(-error)));
    }
  }
  if (status.ok()) {
    if (int error = seccomp_attr_set(filter, SCMP_FLTATR_CTL_TSYNC, 1); error != 0) {
      status = absl::InternalError(absl::StrCat("seccomp TSYNC: ", std::strerror(-error)));
    } else if (int loaded = seccomp_load(filter); loaded != 0) {
      status = absl::InternalError(absl::StrCat("seccomp_load: ", std::strerror(-loaded)));
    }
  }
  seccomp_release(filter);
  return status;
#endif
}

}  // namespace xenkvm::vmm
