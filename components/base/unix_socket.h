// Unix-domain sockets as the VMM and xenkvmd use them between each other: a listening socket only
// its owner can connect to, a connection to one, and the peer's user checked on accept.
#ifndef XENKVM_COMPONENTS_BASE_UNIX_SOCKET_H_
#define XENKVM_COMPONENTS_BASE_UNIX_SOCKET_H_

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"
#include "components/base/fd.h"

namespace xenkvm::base {

// Listens on `path` (a stale socket file there is replaced), created mode 0600. `type` is
// SOCK_STREAM or SOCK_SEQPACKET; `what` names the socket in errors ("handover", "control").
absl::StatusOr<Fd> ListenUnix(const std::string& path, int type, int backlog, const std::string& what);

// A connected socket to `path`; close-on-exec, blocking.
absl::StatusOr<Fd> ConnectUnix(const std::string& path, int type, const std::string& what);

// Whether the peer of `connection` runs as root or as `owner`.
bool PeerIsRootOr(const Fd& connection, uid_t owner);

}  // namespace xenkvm::base

#endif  // XENKVM_COMPONENTS_BASE_UNIX_SOCKET_H_
