#include "components/xenbus/net_ring.h"

#include <algorithm>

#include <poll.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {
namespace {

constexpr uint64_t kRequestProducer = 0, kRequestEvent = 4, kResponseProducer = 8, kResponseEvent = 12;
// The largest frame a tap gives: a 64 KiB TCP segment not yet segmented, its headers and a tag.
constexpr size_t kMaxFrame = 65536 + 256;

memory::GuestAddress At(uint64_t gpa) { return memory::GuestAddress(gpa); }

}  // namespace

absl::StatusOr<std::unique_ptr<NetRing>> NetRing::Start(const memory::GuestMemory& memory, xen::GrantTable& grants,
                                                        const net::FrameDevice& device, Options options,
                                                        Notify notify, std::shared_ptr<Shared> shared) {
  if (!shared) shared = std::make_shared<Shared>(options);
  auto ring =
      std::unique_ptr<NetRing>(new NetRing(memory, grants, device, options, std::move(notify), std::move(shared)));
  absl::StatusOr<base::EventFd> wake = base::EventFd::Create();
  if (!wake.ok()) return wake.status();
  ring->wake_.emplace(std::move(*wake));
  for (auto [ring_state, gref, name, slots, size] :
       {std::tuple{&ring->tx_, options.tx_ring_gref, "tx-ring-ref", netif::kTxSlots, netif::kTxSlotSize},
        std::tuple{&ring->rx_, options.rx_ring_gref, "rx-ring-ref", netif::kRxSlots, netif::kRxSlotSize}}) {
    if (int16_t status = grants.Map(gref, /*readonly=*/false, &ring_state->mapping); status != 0) {
      if (ring_state == &ring->rx_) grants.Unmap(ring->tx_.mapping);
      ring->tx_.slots = ring->rx_.slots = 0;  // nothing for the destructor to release
      return absl::InvalidArgumentError(
          absl::StrCat("the frontend's ", name, " ", gref, " cannot be mapped (GNTST ", status, ")"));
    }
    ring_state->slots = slots;
    ring_state->slot_size = size;
    // Both ends start where the responses are.
    ring_state->response_producer =
        memory.AtomicLoad<uint32_t>(At(ring_state->Address(kResponseProducer))).value_or(0);
    ring_state->request_consumer = ring_state->response_producer;
  }
  ring->thread_ = std::thread([raw = ring.get()] { raw->Run(); });
  ring->Kick();
  return ring;
}

NetRing::Shared::Shared(const Options& options) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mutex);
  if (options.tx_bytes_per_second != 0) tx_bucket.emplace(options.tx_bytes_per_second, options.tx_burst, now);
  if (options.rx_bytes_per_second != 0) rx_bucket.emplace(options.rx_bytes_per_second, options.rx_burst, now);
}

NetRing::NetRing(const memory::GuestMemory& memory, xen::GrantTable& grants, const net::FrameDevice& device, Options options,
                 Notify notify, std::shared_ptr<Shared> shared)
    : memory_(memory), grants_(grants), device_(device), options_(options), notify_(std::move(notify)),
      order_(options.accelerator), frame_(kMaxFrame), shared_(std::move(shared)) {}

bool NetRing::Admit(bool transmit, uint64_t bytes) {
  if ((transmit ? options_.tx_bytes_per_second : options_.rx_bytes_per_second) == 0) return true;
  absl::MutexLock lock(&shared_->mutex);
  std::optional<net::TokenBucket>& bucket = transmit ? shared_->tx_bucket : shared_->rx_bucket;
  if (!bucket) return true;
  const absl::Time now = absl::Now();
  if (bucket->TryTake(bytes, now)) return true;
  resume_at_ = std::min(resume_at_, now + bucket->TimeUntil(bytes, now));
  return false;
}

NetRing::~NetRing() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  (void)wake_->Write();
  if (thread_.joinable()) thread_.join();
  if (tx_.slots != 0) grants_.Unmap(tx_.mapping);
  if (rx_.slots != 0) grants_.Unmap(rx_.mapping);
}

void NetRing::Kick() {
  if (wake_) (void)wake_->Write();
}

void NetRingStatistics::Add(const NetRingStatistics& other) {
  tx_packets += other.tx_packets;
  tx_bytes += other.tx_bytes;
  tx_dropped += other.tx_dropped;
  tx_errors += other.tx_errors;
  tx_segmentation_offloaded += other.tx_segmentation_offloaded;
  rx_packets += other.rx_packets;
  rx_bytes += other.rx_bytes;
  rx_dropped += other.rx_dropped;
  rx_errors += other.rx_errors;
  rx_segmentation_offloaded += other.rx_segmentation_offloaded;
  if (other.broken && !broken) {
    broken = true;
    broken_reason = other.broken_reason;
  }
}

NetRingStatistics NetRing::Statistics() const {
  absl::MutexLock lock(&mutex_);
  return statistics_;
}

bool NetRing::Break(std::string reason) {
  spdlog::warn("xen-net {}: the frontend broke its rings ({}); they are no longer served", device_.name(), reason);
  absl::MutexLock lock(&mutex_);
  statistics_.broken = true;
  statistics_.broken_reason = std::move(reason);
  return false;
}

void NetRing::Run() {
  bool broken = false;
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      if (stopping_) return;
    }
    bool notify_transmit = false, notify_receive = false;
    if (!broken) broken = !ServeTransmit(notify_transmit) || !ServeReceive(notify_receive);
    if (notify_transmit || notify_receive) notify_(notify_transmit, notify_receive);
    // Frames from the device are read only while the guest has somewhere to put them.
    pollfd fds[2] = {{wake_->fd(), POLLIN, 0}, {device_.fd(), static_cast<short>(broken || frame_size_ ? 0 : POLLIN), 0}};
    // A direction waiting for its token bucket is looked at again when the tokens are there.
    int timeout_ms = -1;
    if (resume_at_ != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(resume_at_ - absl::Now()) + 1));
    }
    if (::poll(fds, 2, timeout_ms) < 0 && errno != EINTR) return;
    if (fds[0].revents & POLLIN) (void)wake_->Read();
    if (absl::Now() >= resume_at_) resume_at_ = absl::InfiniteFuture();
  }
}

std::optional<uint32_t> NetRing::Produced(const Ring& ring) {
  absl::StatusOr<uint32_t> producer = memory_.AtomicLoad<uint32_t>(At(ring.Address(kRequestProducer)));
  if (!producer.ok() || *producer - ring.request_consumer > ring.slots) return std::nullopt;
  return *producer;
}

bool NetRing::PublishResponses(Ring& ring, uint32_t published) {
  if (ring.response_producer == published) return false;
  (void)memory_.AtomicStore<uint32_t>(At(ring.Address(kResponseProducer)), ring.response_producer);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return order_.Confirm([&] {
    const uint32_t event = memory_.AtomicLoad<uint32_t>(At(ring.Address(kResponseEvent))).value_or(published);
    return ring.response_producer - event < ring.response_producer - published;
  });
}

bool NetRing::ServeTransmit(bool& notify) {
  bool throttled = false;
  while (true) {
    bool incomplete = false;
    std::optional<uint32_t> producer = Produced(tx_);
    if (!producer) return Break("a transmit request index out of range");
    const uint32_t published = tx_.response_producer;
    while (tx_.request_consumer != *producer) {
      const uint32_t available = *producer - tx_.request_consumer;
      netif::TxPacket packet = netif::ParseTxPacket([&](uint32_t i) -> std::optional<std::array<uint8_t, netif::kTxSlotSize>> {
        if (i >= available) return std::nullopt;
        std::array<uint8_t, netif::kTxSlotSize> slot;
        if (!memory_.Read(At(tx_.SlotAddress(tx_.request_consumer + i)), slot).ok()) return std::nullopt;
        return slot;
      });
      if (packet.verdict == netif::TxVerdict::kIncomplete) {
        incomplete = true;  // the rest comes with a later event
        break;
      }
      if (packet.verdict == netif::TxVerdict::kFatal) return Break(packet.reason);
      if (packet.verdict == netif::TxVerdict::kSend && !Admit(/*transmit=*/true, packet.size)) {
        throttled = true;  // stays on the ring until its bytes are there
        break;
      }
      int16_t status = netif::kRspOkay;
      if (packet.verdict == netif::TxVerdict::kControl) {
        status = ChangeMulticast(*packet.multicast);
      } else if (packet.verdict == netif::TxVerdict::kDrop) {
        status = netif::kRspError;
        absl::MutexLock lock(&mutex_);
        if (statistics_.tx_dropped++ == 0) spdlog::warn("xen-net {}: dropped a packet: {}", device_.name(), packet.reason);
      } else {
        Transmit(packet, status);
      }
      for (const std::optional<netif::TxRequest>& request : packet.requests) {
        const auto response = request ? netif::EncodeTxResponse(request->id, status)
                                       : netif::EncodeTxResponse(0, netif::kRspNull);
        if (!memory_.Write(At(tx_.SlotAddress(tx_.response_producer)), response).ok()) {
          return Break("the transmit ring cannot be written");
        }
        ++tx_.response_producer;
      }
      tx_.request_consumer += packet.slots;
    }
    if (PublishResponses(tx_, published)) notify = true;
    if (throttled) return true;  // the timer brings it back; events would only find it waiting
    // Ask for an event at the next request (past a packet's first slots already there), then look
    // once more (it may have just come).
    (void)memory_.AtomicStore<uint32_t>(At(tx_.Address(kRequestEvent)),
                                        (incomplete ? *producer : tx_.request_consumer) + 1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::optional<uint32_t> again;
    if (!order_.Confirm([&] {
          again = Produced(tx_);
          return !again || *again != *producer;
        })) {
      return true;
    }
    if (!again) return true;
  }
}

int16_t NetRing::ChangeMulticast(const netif::ExtraInfo& extra) {
  const std::array<uint8_t, 6>& address = extra.mcast_address;
  if ((address[0] & 1) == 0) return netif::kRspError;  // not a multicast address
  absl::MutexLock lock(&shared_->mutex);
  std::vector<std::array<uint8_t, 6>>& multicast = shared_->multicast;
  auto found = std::find(multicast.begin(), multicast.end(), address);
  if (extra.type == netif::kExtraMcastDel) {
    if (found != multicast.end()) multicast.erase(found);
    return netif::kRspOkay;
  }
  if (found != multicast.end()) return netif::kRspOkay;
  if (multicast.size() == kMaxMulticastAddresses) return netif::kRspError;
  multicast.push_back(address);
  return netif::kRspOkay;
}

bool NetRing::Wanted() const {
  if (!options_.multicast_control || frame_size_ < 6 || (frame_[0] & 1) == 0) return true;  // unicast
  std::array<uint8_t, 6> destination;
  std::copy(frame_.begin(), frame_.begin() + 6, destination.begin());
  if (destination == std::array<uint8_t, 6>{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) return true;
  absl::MutexLock lock(&shared_->mutex);
  return std::find(shared_->multicast.begin(), shared_->multicast.end(), destination) != shared_->multicast.end();
}

bool NetRing::PrepareOffload(const netif::TxPacket& packet, net::FrameOffload& offload) {
  if (!(packet.flags & netif::kTxCsumBlank) && !packet.gso) return true;
  if (!device_.offloads()) {
    if (packet.gso) return false;  // not offered (feature-gso-tcpv4/6 "0")
    (void)netif::CompleteChecksum(packet_);  // a blank checksum over anything else is left as it is
    return true;
  }
  // The field is rewritten with the pseudo-header's sum whatever the frontend left there (as
  // netback's recalculation for GSO): the device completes from that.
  std::optional<netif::ChecksumPlace> place = netif::PreparePartialChecksum(packet_);
  if (!place) return !packet.gso;
  offload.partial_checksum = true;
  offload.checksum_start = static_cast<uint16_t>(place->start);
  offload.checksum_offset = static_cast<uint16_t>(place->offset);
  if (packet.gso) {
    const bool v6 = packet.gso->gso_type == netif::kGsoTcpV6;
    if (place->protocol != 6 || place->ipv6 != v6) return false;
    offload.segmentation = v6 ? net::FrameOffload::Segmentation::kTcpV6 : net::FrameOffload::Segmentation::kTcpV4;
    offload.segment_size = packet.gso->gso_size;
  }
  return true;
}

void NetRing::Transmit(const netif::TxPacket& packet, int16_t& status) {
  packet_.resize(packet.size);
  size_t at = 0;
  bool copied = true;
  for (const netif::TxPacket::Piece& piece : packet.pieces) {
    if (!copied) break;
    copied = grants_.Copy(piece.gref, piece.offset, std::span<uint8_t>(packet_).subspan(at, piece.length),
                          /*to_guest=*/false) == 0;
    at += piece.length;
  }
  net::FrameOffload offload;
  const bool sent = copied && PrepareOffload(packet, offload) && device_.Write(packet_, offload).ok();
  status = sent ? netif::kRspOkay : netif::kRspError;
  absl::MutexLock lock(&mutex_);
  if (sent) {
    ++statistics_.tx_packets;
    statistics_.tx_bytes += packet.size;
    if (offload.segmentation != net::FrameOffload::Segmentation::kNone) ++statistics_.tx_segmentation_offloaded;
  } else {
    ++statistics_.tx_errors;
  }
}

bool NetRing::ServeReceive(bool& notify) {
  const uint32_t published = rx_.response_producer;
  bool ok = true;
  while (true) {
    const auto data_slots = [this] {
      return static_cast<uint32_t>((frame_size_ + netif::kPageSize - 1) / netif::kPageSize);
    };
    if (frame_size_ == 0) {
      absl::StatusOr<size_t> got = device_.Read(frame_, frame_offload_);
      if (!got.ok() || *got == 0) break;
      frame_size_ = *got;
      // Decided once a frame, however long it is held (a checksum completed twice is spoiled).
      // Dropped: a multicast address the frontend did not add; larger than a page when the
      // frontend takes one slot a frame; an offload it cannot take.
      std::optional<uint8_t> gso_type;
      if (!Wanted() || (data_slots() > 1 && !options_.rx_scatter_gather) || !(gso_type = ReceiveOffload())) {
        frame_size_ = 0;
        absl::MutexLock lock(&mutex_);
        ++statistics_.rx_dropped;
        continue;
      }
      frame_gso_type_ = *gso_type;
    }
    const uint32_t needed = data_slots() + (frame_gso_type_ != 0 ? 1 : 0);
    std::optional<uint32_t> producer = Produced(rx_);
    if (!producer) {
      ok = Break("a receive request index out of range");
      break;
    }
    if (*producer - rx_.request_consumer < needed) {
      // Held: ask for an event once enough slots are posted, then look once more.
      (void)memory_.AtomicStore<uint32_t>(At(rx_.Address(kRequestEvent)), rx_.request_consumer + needed);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (order_.Confirm([&] {
            std::optional<uint32_t> again = Produced(rx_);
            return again && *again - rx_.request_consumer >= needed;
          })) {
        continue;
      }
      break;
    }
    if (!Admit(/*transmit=*/false, frame_size_)) break;  // held until its bytes are there
    if (!DeliverFrame(frame_gso_type_)) {
      ok = Break("the receive ring cannot be written");
      break;
    }
  }
  if (PublishResponses(rx_, published)) notify = true;
  return ok;
}

std::optional<uint8_t> NetRing::ReceiveOffload() {
  const net::FrameOffload& offload = frame_offload_;
  uint8_t gso_type = 0;
  switch (offload.segmentation) {
    case net::FrameOffload::Segmentation::kNone:
      break;
    case net::FrameOffload::Segmentation::kTcpV4:
      if (!options_.rx_gso_tcpv4 || offload.segment_size == 0) return std::nullopt;
      gso_type = netif::kGsoTcpV4;
      break;
    case net::FrameOffload::Segmentation::kTcpV6:
      if (!options_.rx_gso_tcpv6 || offload.segment_size == 0) return std::nullopt;
      gso_type = netif::kGsoTcpV6;
      break;
    default:
      return std::nullopt;
  }
  if (offload.partial_checksum && !options_.rx_partial_checksum &&
      !netif::CompletePartialChecksum(std::span<uint8_t>(frame_).first(frame_size_), offload.checksum_start,
                                      offload.checksum_offset)) {
    return std::nullopt;
  }
  return gso_type;
}

bool NetRing::DeliverFrame(uint8_t gso_type) {
  const size_t size = frame_size_;
  frame_size_ = 0;
  bool copied = true;
  // The first data slot's flags: what the checksum is, and whether the GSO extra follows it.
  uint16_t first_flags = gso_type != 0 ? netif::kRxExtraInfo : 0;
  if (frame_offload_.partial_checksum && options_.rx_partial_checksum) {
    first_flags |= netif::kRxCsumBlank | netif::kRxDataValidated;
  } else if (frame_offload_.partial_checksum || frame_offload_.checksum_verified) {
    first_flags |= netif::kRxDataValidated;  // completed here, or checked by the host
  }
  // Every request taken, in ring order, with the bytes copied into its page; the extra-info
  // slot (after the first) takes a request and carries no data.
  struct Taken {
    netif::RxRequest request;
    uint16_t length;
    bool extra;
  };
  std::vector<Taken> taken;
  for (size_t at = 0; at < size; at += netif::kPageSize) {
    for (bool extra : {false, true}) {
      if (extra && (at != 0 || gso_type == 0)) continue;
      std::array<uint8_t, netif::kRxSlotSize> slot;
      if (!memory_.Read(At(rx_.SlotAddress(rx_.request_consumer++)), slot).ok()) return false;
      const netif::RxRequest request = netif::DecodeRxRequest(slot);
      const uint16_t length = extra ? 0 : static_cast<uint16_t>(std::min<size_t>(netif::kPageSize, size - at));
      if (copied && !extra) {
        copied = grants_.Copy(request.gref, 0, std::span<uint8_t>(frame_).subspan(at, length), /*to_guest=*/true) == 0;
      }
      taken.push_back({request, length, extra});
    }
  }
  const size_t last_data = taken.back().extra ? taken.size() - 2 : taken.size() - 1;
  for (size_t i = 0; i < taken.size(); ++i) {
    const Taken& slot = taken[i];
    // Not copied: every slot an error of its own (no flags chain them).
    std::array<uint8_t, netif::kRxSlotSize> response = netif::EncodeRxResponse(slot.request.id, 0, 0, netif::kRspError);
    if (copied && slot.extra) {
      response = netif::EncodeRxGsoExtra(gso_type, frame_offload_.segment_size);
    } else if (copied) {
      uint16_t flags = i < last_data ? netif::kRxMoreData : 0;
      if (i == 0) flags |= first_flags;
      response = netif::EncodeRxResponse(slot.request.id, 0, flags, static_cast<int16_t>(slot.length));
    }
    if (!memory_.Write(At(rx_.SlotAddress(rx_.response_producer++)), response).ok()) return false;
  }
  absl::MutexLock lock(&mutex_);
  if (copied) {
    ++statistics_.rx_packets;
    statistics_.rx_bytes += size;
    if (gso_type != 0) ++statistics_.rx_segmentation_offloaded;
  } else {
    ++statistics_.rx_errors;
  }
  return true;
}

}  // namespace xenkvm::xenbus
