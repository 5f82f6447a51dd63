#include "components/xen/xenstore/ring_server.h"

#include <array>
#include <cstddef>

#include "spdlog/spdlog.h"
#include "xen/io/xs_wire.h"

namespace xenkvm::xen::xenstore {
namespace {

constexpr uint64_t kRequestOffset = offsetof(xenstore_domain_interface, req);
constexpr uint64_t kReplyOffset = offsetof(xenstore_domain_interface, rsp);
constexpr uint64_t kRequestConsumer = offsetof(xenstore_domain_interface, req_cons);
constexpr uint64_t kRequestProducer = offsetof(xenstore_domain_interface, req_prod);
constexpr uint64_t kReplyConsumer = offsetof(xenstore_domain_interface, rsp_cons);
constexpr uint64_t kReplyProducer = offsetof(xenstore_domain_interface, rsp_prod);
constexpr uint64_t kServerFeatures = offsetof(xenstore_domain_interface, server_features);
constexpr uint64_t kConnection = offsetof(xenstore_domain_interface, connection);
constexpr uint64_t kError = offsetof(xenstore_domain_interface, error);
constexpr uint32_t kRingSize = XENSTORE_RING_SIZE;

}  // namespace

absl::StatusOr<std::unique_ptr<RingServer>> RingServer::Create(Store& store, const memory::GuestMemory& memory,
                                                               uint64_t ring_gpa, uint32_t domid,
                                                               std::function<void()> notify,
                                                               std::function<void()> schedule) {
  if (ring_gpa % 4096 != 0 || !memory.IsValidRange(memory::GuestAddress(ring_gpa), 4096)) {
    return absl::InvalidArgumentError("xenstore: the ring page must be a page of guest RAM");
  }
  auto server = std::unique_ptr<RingServer>(new RingServer(memory, ring_gpa, std::move(notify)));
  server->connection_ = std::make_unique<Connection>(store, domid, /*privileged=*/false, std::move(schedule));
  if (absl::Status zeroed = memory.Zero(memory::GuestAddress(ring_gpa), 4096); !zeroed.ok()) return zeroed;
  (void)server->StoreIndex(kServerFeatures, XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR);
  return server;
}

std::optional<uint32_t> RingServer::LoadIndex(uint64_t offset) const {
  absl::StatusOr<uint32_t> value = memory_.AtomicLoad<uint32_t>(memory::GuestAddress(ring_gpa_ + offset));
  return value.ok() ? std::optional<uint32_t>(*value) : std::nullopt;
}

bool RingServer::StoreIndex(uint64_t offset, uint32_t value) const {
  return memory_.AtomicStore<uint32_t>(memory::GuestAddress(ring_gpa_ + offset), value).ok();
}

void RingServer::Fail(uint32_t error) {
  error_ = error;
  (void)StoreIndex(kError, error);
  spdlog::warn("xenstore: the guest broke its ring ({}); ignoring it until it reconnects",
               error == XENSTORE_ERROR_RINGIDX ? "a ring index out of range" : "a payload over 4096 bytes");
}

// The guest asks for a fresh start (after kexec or resume): drop its state and zero the indexes.
bool RingServer::HandleReconnect() {
  std::optional<uint32_t> connection = LoadIndex(kConnection);
  if (!connection || *connection != XENSTORE_RECONNECT) return false;
  connection_->Reset();
  request_consumer_ = reply_producer_ = 0;
  error_ = 0;
  for (uint64_t offset : {kRequestConsumer, kRequestProducer, kReplyConsumer, kReplyProducer, kError}) {
    (void)StoreIndex(offset, 0);
  }
  (void)StoreIndex(kConnection, XENSTORE_CONNECTED);
  return true;
}

bool RingServer::MoveReplies() {
  std::span<const uint8_t> output = connection_->Output();
  if (output.empty()) return false;
  std::optional<uint32_t> consumer = LoadIndex(kReplyConsumer);
  if (!consumer) return false;
  const uint32_t used = reply_producer_ - *consumer;
  if (used > kRingSize) {
    Fail(XENSTORE_ERROR_RINGIDX);
    return false;
  }
  const uint32_t count = std::min<uint32_t>(kRingSize - used, static_cast<uint32_t>(output.size()));
  if (count == 0) return false;
  if (!memory_.WriteRing(memory::GuestAddress(ring_gpa_ + kReplyOffset), kRingSize, reply_producer_,
                         output.first(count))
           .ok()) {
    return false;
  }
  reply_producer_ += count;
  (void)StoreIndex(kReplyProducer, reply_producer_);  // release: the bytes are visible first
  connection_->Consume(count);
  return true;
}

bool RingServer::MoveRequests() {
  if (!connection_->WantsInput()) return false;
  std::optional<uint32_t> producer = LoadIndex(kRequestProducer);
  if (!producer) return false;
  const uint32_t available = *producer - request_consumer_;
  if (available > kRingSize) {
    Fail(XENSTORE_ERROR_RINGIDX);
    return false;
  }
  if (available == 0) return false;
  // Copied once; the connection parses only this copy.
  std::array<uint8_t, kRingSize> bytes;
  if (!memory_.ReadRing(memory::GuestAddress(ring_gpa_ + kRequestOffset), kRingSize, request_consumer_,
                        std::span<uint8_t>(bytes.data(), available))
           .ok()) {
    return false;
  }
  absl::StatusOr<size_t> taken = connection_->Receive(std::span<const uint8_t>(bytes.data(), available));
  if (!taken.ok()) {
    Fail(XENSTORE_ERROR_PROTO);
    return false;
  }
  if (*taken == 0) return false;
  request_consumer_ += static_cast<uint32_t>(*taken);
  (void)StoreIndex(kRequestConsumer, request_consumer_);
  return true;
}

void RingServer::Process() {
  bool moved = HandleReconnect();
  if (error_ != 0) {
    if (moved) notify_();
    return;
  }
  // Replies first: they make room for the requests a full output held back.
  for (bool progress = true; progress && error_ == 0;) {
    progress = MoveReplies();
    progress |= MoveRequests();
    moved |= progress;
  }
  if (moved || error_ != 0) notify_();  // an error, once: later events find the ring stopped
}

}  // namespace xenkvm::xen::xenstore
