// One XenStore client's wire protocol (xs_wire.h): it frames the bytes a transport receives into
// messages {type, req_id, tx_id, len} + payload, answers each through the Store, and queues the
// replies and watch events for the transport to send. Shared by the guest ring and the Unix socket.
//
// Hostile input: a payload over 4096 bytes is a protocol error (the connection is dead: the ring
// reports XENSTORE_ERROR_PROTO, the socket closes); anything else malformed gets an XS_ERROR reply.
// Memory stays bounded: a client that does not read stops being read (WantsInput) and watch events
// beyond the output budget are dropped and counted (XSA-326).
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_CONNECTION_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_CONNECTION_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "components/xen/xenstore/store.h"

namespace xenkvm::xen::xenstore {

inline constexpr size_t kHeaderSize = 16;
// Output the connection holds before it stops reading requests and drops watch events.
inline constexpr size_t kOutputBudget = 64 * 1024;

class Connection {
 public:
  // `output_ready` runs when a watch event was queued from outside Receive() (another client's
  // write); it must not call back into the store (post the transport's work instead).
  Connection(Store& store, uint32_t domid, bool privileged, std::function<void()> output_ready);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Takes bytes from the client and answers every complete message. Returns how many bytes it
  // took: fewer than offered when its output is over budget. kInvalidArgument on a protocol
  // violation; the connection takes nothing more after that.
  absl::StatusOr<size_t> Receive(std::span<const uint8_t> bytes);
  bool WantsInput() const { return !failed_ && output_.size() - output_sent_ < kOutputBudget; }

  // Bytes waiting to go to the client; Consume(n) after sending n of them.
  std::span<const uint8_t> Output() const;
  void Consume(size_t bytes);

  // Forgets partial input and pending output, drops watches and transactions (ring reconnection).
  void Reset();

  bool failed() const { return failed_; }
  uint64_t dropped_events() const { return dropped_events_; }
  uint64_t messages() const { return messages_; }

 private:
  void Answer(uint32_t type, uint32_t request_id, uint32_t transaction, std::string_view payload);
  void Queue(uint32_t type, uint32_t request_id, uint32_t transaction, std::string_view payload);
  void QueueError(uint32_t request_id, uint32_t transaction, Error error);
  void QueueEvent(std::string_view path, std::string_view token);

  Store& store_;
  const uint32_t domid_;
  const bool privileged_;
  std::function<void()> output_ready_;
  Store::ClientId client_;
  std::string input_;
  std::string output_;
  size_t output_sent_ = 0;
  bool failed_ = false;
  bool answering_ = false;
  uint64_t dropped_events_ = 0;
  uint64_t messages_ = 0;
};

}  // namespace xenkvm::xen::xenstore

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_CONNECTION_H_
