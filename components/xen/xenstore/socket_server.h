// External XenStore access: a Unix socket that speaks the xenstored socket protocol, so that
// Debian's xenstore-utils (XENSTORED_PATH=<socket> xenstore-read/-write/-ls/-watch) and other
// tools reach the VM's store. Socket clients are privileged (domain 0), as xenstored's are, so the
// socket is created mode 0600. Runs on the store's event loop.
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_SOCKET_SERVER_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_SOCKET_SERVER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "components/base/event_loop.h"
#include "components/base/fd.h"
#include "components/xen/xenstore/connection.h"
#include "components/xen/xenstore/store.h"

namespace xenkvm::xen::xenstore {

class SocketServer {
 public:
  // Listens on `path` (an old socket file there is replaced). Call on the loop's thread or
  // before it runs; destroy it on that thread or after the loop stopped.
  static absl::StatusOr<std::unique_ptr<SocketServer>> Start(Store& store, base::EventLoop& loop,
                                                             const std::string& path);
  ~SocketServer();

  size_t clients() const { return clients_.size(); }

 private:
  struct Client {
    base::Fd fd;
    std::unique_ptr<Connection> connection;
    std::string input;  // read but not yet taken (the connection's output was over budget)
  };
  SocketServer(Store& store, base::EventLoop& loop) : store_(store), loop_(loop) {}
  void Accept();
  void Service(uint64_t id, uint32_t events);
  void UpdateInterest(uint64_t id);
  void Close(uint64_t id);

  Store& store_;
  base::EventLoop& loop_;
  std::string path_;
  base::Fd listener_;
  std::map<uint64_t, Client> clients_;
  uint64_t next_id_ = 1;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace xenkvm::xen::xenstore

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_SOCKET_SERVER_H_
