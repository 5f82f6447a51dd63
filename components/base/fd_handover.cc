#include "components/base/fd_handover.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "components/base/status.h"
#include "components/base/unix_socket.h"
#include "spdlog/spdlog.h"

namespace xenkvm::base {
namespace {

constexpr int kReplyTimeoutMs = 5000;
constexpr char kAccepted = 'y';

// One message: a payload and room for one descriptor (SCM_RIGHTS), as both sides use it.
struct OneFdMessage {
  OneFdMessage(void* data, size_t size) : payload{data, size} {
    header.msg_iov = &payload;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof(control);
  }
  OneFdMessage(const OneFdMessage&) = delete;
  OneFdMessage& operator=(const OneFdMessage&) = delete;
  iovec payload;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr header{};
};

bool ValidToken(const std::string& token) {
  return !token.empty() && token.size() <= kMaxHandoverTokenSize &&
         std::all_of(token.begin(), token.end(), [](char c) { return c > ' ' && c < 127; });
}

}  // namespace

std::string NewHandoverToken() {
  std::random_device random;
  return absl::StrFormat("%08x%08x%08x%08x", random(), random(), random(), random());
}

absl::Status HandOverFd(const std::string& socket_path, const std::string& token, int fd) {
  if (!ValidToken(token)) return absl::InvalidArgumentError("handover token: 1 to 64 printable characters");
  XENKVM_ASSIGN_OR_RETURN(Fd socket_fd, ConnectUnix(socket_path, SOCK_SEQPACKET, "handover"));
  OneFdMessage message(const_cast<char*>(token.data()), token.size());
  cmsghdr* rights = CMSG_FIRSTHDR(&message.header);
  rights->cmsg_level = SOL_SOCKET;
  rights->cmsg_type = SCM_RIGHTS;
  rights->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(rights), &fd, sizeof(int));
  if (sendmsg(socket_fd.get(), &message.header, MSG_NOSIGNAL) < 0) {
    return ErrnoStatus(absl::StrCat("handover: sending to ", socket_path));
  }
  pollfd ready{socket_fd.get(), POLLIN, 0};
  if (poll(&ready, 1, kReplyTimeoutMs) != 1) {
    return absl::DeadlineExceededError(absl::StrCat("handover: ", socket_path, " did not confirm within 5 s"));
  }
  char reply = 0;
  if (recv(socket_fd.get(), &reply, 1, 0) != 1 || reply != kAccepted) {
    return absl::FailedPreconditionError(absl::StrCat("handover: ", socket_path, " refused the file"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FdHandoverServer>> FdHandoverServer::Start(const std::string& socket_path) {
  XENKVM_ASSIGN_OR_RETURN(Fd listener, ListenUnix(socket_path, SOCK_SEQPACKET, 8, "handover"));
  auto server = std::unique_ptr<FdHandoverServer>(new FdHandoverServer(std::move(listener), geteuid()));
  server->thread_ = std::thread([raw = server.get()] { raw->Serve(); });
  return server;
}

FdHandoverServer::~FdHandoverServer() {
  shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
  if (thread_.joinable()) thread_.join();
}

void FdHandoverServer::Serve() {
  while (true) {
    Fd connection(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!connection.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    Receive(connection);
  }
}

void FdHandoverServer::Receive(const Fd& connection) {
  if (!PeerIsRootOr(connection, owner_)) {
    spdlog::warn("handover: refused a connection from another user");
    return;
  }
  pollfd ready{connection.get(), POLLIN, 0};
  if (poll(&ready, 1, kReplyTimeoutMs) != 1) return;
  char token[kMaxHandoverTokenSize + 1] = {};
  OneFdMessage message(token, kMaxHandoverTokenSize);
  const ssize_t size = recvmsg(connection.get(), &message.header, MSG_CMSG_CLOEXEC);
  Fd received;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message.header); header != nullptr;
       header = CMSG_NXTHDR(&message.header, header)) {
    if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS &&
        header->cmsg_len == CMSG_LEN(sizeof(int))) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(header), sizeof(int));
      received.Reset(fd);
    }
  }
  const std::string name(token, size > 0 ? static_cast<size_t>(size) : 0);
  if (!received.valid() || (message.header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || !ValidToken(name)) {
    spdlog::warn("handover: a malformed message (one token of 1-64 characters and one file expected)");
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    std::erase_if(pending_, [&](const auto& entry) { return entry.first == name; });
    if (pending_.size() == kMaxPending) pending_.pop_front();  // never taken: closed
    pending_.emplace_back(name, std::move(received));
  }
  (void)send(connection.get(), &kAccepted, 1, MSG_NOSIGNAL);
}

absl::StatusOr<Fd> FdHandoverServer::Take(const std::string& token) {
  absl::MutexLock lock(&mutex_);
  for (auto entry = pending_.begin(); entry != pending_.end(); ++entry) {
    if (entry->first != token) continue;
    Fd fd = std::move(entry->second);
    pending_.erase(entry);
    return fd;
  }
  return absl::NotFoundError(absl::StrCat("no file was handed over as \"", token, "\" (or it was replaced by ",
                                          kMaxPending, " newer ones)"));
}

}  // namespace xenkvm::base
