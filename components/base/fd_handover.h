// Handing open files from one process to another over a Unix socket (SCM_RIGHTS). xenkvmd opens a
// hot-plugged disk image or tap itself -- as root, with its own checks and locks -- and hands the
// open file to a VMM that could not open it: one running as an unprivileged user, or confined to an
// empty root (Firecracker's jailer gives its VMM files the same way). The daemon sends (token, file)
// and then names the token in the gRPC call that uses it.
#ifndef XENKVM_COMPONENTS_BASE_FD_HANDOVER_H_
#define XENKVM_COMPONENTS_BASE_FD_HANDOVER_H_

#include <sys/types.h>

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "components/base/fd.h"

namespace xenkvm::base {

// Tokens are 1..64 printable characters.
inline constexpr size_t kMaxHandoverTokenSize = 64;

// Sends `fd` under `token` to the FdHandoverServer at `socket_path`; returns once the server holds it.
absl::Status HandOverFd(const std::string& socket_path, const std::string& token, int fd);

// A random token (32 hex digits).
std::string NewHandoverToken();

// Receives files on a Unix socket (mode 0600) from root or from this process's own user, one per
// connection, and keeps the last kMaxPending until taken. The listening socket outlives any later
// change of user or root directory.
class FdHandoverServer {
 public:
  static constexpr size_t kMaxPending = 16;

  static absl::StatusOr<std::unique_ptr<FdHandoverServer>> Start(const std::string& socket_path);
  ~FdHandoverServer();
  FdHandoverServer(const FdHandoverServer&) = delete;
  FdHandoverServer& operator=(const FdHandoverServer&) = delete;

  // The file handed over under `token`, now owned by the caller; kNotFound when there is none.
  absl::StatusOr<Fd> Take(const std::string& token);

 private:
  FdHandoverServer(Fd listener, uid_t owner) : listener_(std::move(listener)), owner_(owner) {}
  void Serve();
  void Receive(const Fd& connection);

  Fd listener_;
  const uid_t owner_;  // besides root, the only user who may hand files over
  absl::Mutex mutex_;
  std::deque<std::pair<std::string, Fd>> pending_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_FD_HANDOVER_H_
