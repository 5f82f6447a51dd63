// The server side of a guest's XenStore ring (xenstore_domain_interface: req[1024], rsp[1024],
// four free-running indexes, server_features, connection, error) in guest memory. The guest
// produces requests and consumes replies; this end consumes and produces, keeping its own indexes
// (what the guest writes there is never trusted). A producer index more than 1024 ahead, or a
// payload over 4096 bytes, stops the ring with XENSTORE_ERROR_RINGIDX / _PROTO until the guest
// asks to reconnect (connection = XENSTORE_RECONNECT), as XENSTORE_SERVER_FEATURE_RECONNECTION
// and _ERROR promise.
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_RING_SERVER_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_RING_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"
#include "components/xen/xenstore/connection.h"
#include "components/xen/xenstore/store.h"

namespace xenkvm::xen::xenstore {

class RingServer {
 public:
  // `ring_gpa`: the page (zeroed here, features advertised). `notify` raises the guest's XenStore
  // event channel; `schedule` arranges a later Process() call on the same thread (a watch fired by
  // another client). Everything runs on the store's thread.
  static absl::StatusOr<std::unique_ptr<RingServer>> Create(Store& store, const memory::GuestMemory& memory,
                                                            uint64_t ring_gpa, uint32_t domid,
                                                            std::function<void()> notify,
                                                            std::function<void()> schedule);

  // Moves requests and replies; notifies the guest if either moved. Call on each guest event.
  void Process();

  // XENSTORE_ERROR_* the ring stopped with, or 0.
  uint32_t error() const { return error_; }
  const Connection& connection() const { return *connection_; }

 private:
  RingServer(const memory::GuestMemory& memory, uint64_t ring_gpa, std::function<void()> notify)
      : memory_(memory), ring_gpa_(ring_gpa), notify_(std::move(notify)) {}
  bool HandleReconnect();
  void Fail(uint32_t error);
  std::optional<uint32_t> LoadIndex(uint64_t offset) const;
  bool StoreIndex(uint64_t offset, uint32_t value) const;
  bool MoveReplies();
  bool MoveRequests();

  const memory::GuestMemory& memory_;
  const uint64_t ring_gpa_;
  std::function<void()> notify_;
  std::unique_ptr<Connection> connection_;
  uint32_t request_consumer_ = 0;
  uint32_t reply_producer_ = 0;
  uint32_t error_ = 0;
};

}  // namespace xenkvm::xen::xenstore

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_RING_SERVER_H_
