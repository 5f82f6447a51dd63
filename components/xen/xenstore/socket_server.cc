#include "components/xen/xenstore/socket_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xen::xenstore {

absl::StatusOr<std::unique_ptr<SocketServer>> SocketServer::Start(Store& store, base::EventLoop& loop,
                                                                  const std::string& path) {
  sockaddr_un address{};
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("xenstore socket: \"", path, "\" must be 1 to ", sizeof(address.sun_path) - 1, " bytes long"));
  }
  auto server = std::unique_ptr<SocketServer>(new SocketServer(store, loop));
  server->listener_ = base::Fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!server->listener_.valid()) return absl::InternalError(absl::StrCat("xenstore socket: socket: ", strerror(errno)));
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  unlink(path.c_str());
  // 0600 from the start: socket clients are privileged.
  mode_t old_mask = umask(0177);
  int bound = bind(server->listener_.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address));
  umask(old_mask);
  if (bound != 0) {
    return absl::FailedPreconditionError(absl::StrCat("xenstore socket: cannot bind ", path, ": ", strerror(errno)));
  }
  server->path_ = path;
  if (listen(server->listener_.get(), 16) != 0) {
    return absl::InternalError(absl::StrCat("xenstore socket: listen: ", strerror(errno)));
  }
  SocketServer* raw = server.get();
  if (absl::Status registered = loop.Register(server->listener_.get(), EPOLLIN, [raw](uint32_t) { raw->Accept(); });
      !registered.ok()) {
    return registered;
  }
  return server;
}

SocketServer::~SocketServer() {
  *alive_ = false;
  while (!clients_.empty()) Close(clients_.begin()->first);
  if (listener_.valid()) (void)loop_.Unregister(listener_.get());
  if (!path_.empty()) unlink(path_.c_str());
}

void SocketServer::Accept() {
  while (true) {
    base::Fd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) return;  // EAGAIN: no more waiting; other errors: the next one will tell
    const uint64_t id = next_id_++;
    std::weak_ptr<bool> alive = alive_;
    auto output_ready = [this, id, alive] {
      // A watch fired from another client's request: send it from the loop, not from the store.
      (void)loop_.Post([this, id, alive] {
        if (alive.lock()) UpdateInterest(id);
      });
    };
    Client& client = clients_[id];
    client.fd = std::move(fd);
    client.connection = std::make_unique<Connection>(store_, 0, /*privileged=*/true, output_ready);
    if (!loop_.Register(client.fd.get(), EPOLLIN, [this, id](uint32_t events) { Service(id, events); }).ok()) {
      clients_.erase(id);
    }
  }
}

void SocketServer::Service(uint64_t id, uint32_t events) {
  auto found = clients_.find(id);
  if (found == clients_.end()) return;
  Client& client = found->second;
  if (events & EPOLLIN) {
    std::array<uint8_t, 16384> buffer;
    ssize_t count = read(client.fd.get(), buffer.data(), buffer.size());
    if (count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR)) return Close(id);
    if (count > 0) client.input.append(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(count));
  } else if (events & (EPOLLHUP | EPOLLERR)) {
    return Close(id);
  }
  UpdateInterest(id);
}

// Feeds held input, writes pending output, and watches for what the connection can take next.
void SocketServer::UpdateInterest(uint64_t id) {
  auto found = clients_.find(id);
  if (found == clients_.end()) return;
  Client& client = found->second;
  for (bool progress = true; progress;) {
    progress = false;
    if (!client.input.empty() && client.connection->WantsInput()) {
      absl::StatusOr<size_t> taken = client.connection->Receive(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(client.input.data()), client.input.size()));
      if (!taken.ok()) {
        spdlog::warn("{}; closing that client", std::string(taken.status().message()));
        return Close(id);
      }
      client.input.erase(0, *taken);
      progress = *taken > 0;
    }
    std::span<const uint8_t> output = client.connection->Output();
    if (!output.empty()) {
      ssize_t sent = send(client.fd.get(), output.data(), output.size(), MSG_NOSIGNAL);
      if (sent < 0 && errno != EAGAIN && errno != EINTR) return Close(id);
      if (sent > 0) {
        client.connection->Consume(static_cast<size_t>(sent));
        progress = true;
      }
    }
  }
  uint32_t interest = 0;
  if (client.input.empty() || client.connection->WantsInput()) interest |= EPOLLIN;
  if (!client.connection->Output().empty()) interest |= EPOLLOUT;
  (void)loop_.Modify(client.fd.get(), interest);
}

void SocketServer::Close(uint64_t id) {
  auto found = clients_.find(id);
  if (found == clients_.end()) return;
  (void)loop_.Unregister(found->second.fd.get());
  clients_.erase(found);
}

}  // namespace xenkvm::xen::xenstore
