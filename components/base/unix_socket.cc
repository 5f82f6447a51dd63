#include "components/base/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "components/base/status.h"

namespace xenkvm::base {
namespace {

absl::StatusOr<sockaddr_un> SocketAddress(const std::string& path, const std::string& what) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " socket \"", path, "\": empty or longer than ", sizeof(address.sun_path) - 1, " bytes"));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

}  // namespace

absl::StatusOr<Fd> ListenUnix(const std::string& path, int type, int backlog, const std::string& what) {
  XENKVM_ASSIGN_OR_RETURN(sockaddr_un address, SocketAddress(path, what));
  Fd listener(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!listener.valid()) return ErrnoStatus(absl::StrCat(what, ": socket"));
  unlink(path.c_str());  // a previous run's
  // Created 0600: the umask covers the bind, so there is no window with wider permissions.
  const mode_t previous = umask(0177);
  const int bound = bind(listener.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  umask(previous);
  if (bound != 0) return ErrnoStatus(absl::StrCat(what, ": binding ", path));
  if (listen(listener.get(), backlog) != 0) return ErrnoStatus(absl::StrCat(what, ": listening on ", path));
  return listener;
}

absl::StatusOr<Fd> ConnectUnix(const std::string& path, int type, const std::string& what) {
  XENKVM_ASSIGN_OR_RETURN(sockaddr_un address, SocketAddress(path, what));
  Fd connection(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!connection.valid()) return ErrnoStatus(absl::StrCat(what, ": socket"));
  if (connect(connection.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return ErrnoStatus(absl::StrCat(what, ": connecting to ", path));
  }
  return connection;
}

bool PeerIsRootOr(const Fd& connection, uid_t owner) {
  ucred peer{};
  socklen_t peer_size = sizeof(peer);
  if (getsockopt(connection.get(), SOL_SOCKET, SO_PEERCRED, &peer, &peer_size) != 0) return false;
  return peer.uid == 0 || peer.uid == owner;
}

}  // namespace xenkvm::base
