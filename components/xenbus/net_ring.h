// The data path of one xen-net device: the transmit and receive rings the frontend granted, served
// on a thread of its own against a frame device (a TAP). Transmit: each packet's requests are
// copied out of their slots once and checked (netif.h) before its data is copied out of the
// granted pages with grant copy; a blank checksum (NETTXF_csum_blank) and a GSO packet's
// segmentation are left to the device when it offloads them, the checksum filled in here when it
// does not; the frame goes to the device; every request is answered. Receive: a frame from the
// device is copied into the pages the frontend posted (request-rx-copy; several slots with
// NETRXF_more_data only when the frontend offers feature-sg), its partial checksum passed on as
// NETRXF_csum_blank and its segmentation as a GSO extra-info slot where the frontend takes them,
// or held until it posts more; frames larger than it can take are dropped and counted. Nothing but granted pages is touched; a frontend that breaks the protocol
// (an index more than the ring ahead, a packet netback would call fatal) stops being served, with
// the reason kept.
#ifndef XENKVM_COMPONENTS_XENBUS_NET_RING_H_
#define XENKVM_COMPONENTS_XENBUS_NET_RING_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <array>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "components/base/event_fd.h"
#include "components/memory/guest_memory.h"
#include "components/net/frame_device.h"
#include "components/net/token_bucket.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/guest_order.h"
#include "components/xenbus/netif.h"

namespace xenkvm::xenbus {

struct NetRingStatistics {
  // Transmit: guest to host. Receive: host to guest.
  uint64_t tx_packets = 0, tx_bytes = 0, tx_dropped = 0, tx_errors = 0;
  uint64_t rx_packets = 0, rx_bytes = 0, rx_dropped = 0, rx_errors = 0;
  // Packets among them whose TCP segmentation was left to the other side (GSO).
  uint64_t tx_segmentation_offloaded = 0, rx_segmentation_offloaded = 0;
  bool broken = false;  // the frontend broke a ring; it is no longer served
  std::string broken_reason;

  // Adds another queue's; the first broken queue's reason is kept.
  void Add(const NetRingStatistics& other);
};

class NetRing {
 public:
  struct Options {
    uint32_t tx_ring_gref = 0;
    uint32_t rx_ring_gref = 0;
    bool rx_scatter_gather = false;  // the frontend's feature-sg: a frame may span receive slots
    // What the frontend takes on receive: partial checksums (NETRXF_csum_blank; without it they
    // are completed here), and TCP not yet segmented (its feature-gso-tcpv4/-tcpv6; without it
    // such a frame is dropped, so the device should not be asked for them).
    bool rx_partial_checksum = false;
    bool rx_gso_tcpv4 = false, rx_gso_tcpv6 = false;
    // Token buckets (bytes a second, at most `burst` at once; 0: unlimited): a packet waits on its
    // ring, a frame on the device, until its bytes are there.
    uint64_t tx_bytes_per_second = 0, tx_burst = 0;
    uint64_t rx_bytes_per_second = 0, rx_burst = 0;
    // The frontend's request-multicast-control: frames to a multicast address it has not added
    // (MCAST_ADD) are not delivered; broadcast always is.
    bool multicast_control = false;
    // The guest's vCPUs (guest_order.h); null where no vCPU runs the frontend (tests).
    accel::Accelerator* accelerator = nullptr;
  };

  // Multicast addresses a frontend may add (netback's XEN_NETBK_MCAST_MAX).
  static constexpr size_t kMaxMulticastAddresses = 64;

  // What the queues of one vif (a NetRing each) share: its token buckets, from the first queue's
  // Options, and the multicast list the frontend keeps through any of them.
  class Shared {
   public:
    explicit Shared(const Options& options);

   private:
    friend class NetRing;
    absl::Mutex mutex;
    std::optional<net::TokenBucket> tx_bucket ABSL_GUARDED_BY(mutex), rx_bucket ABSL_GUARDED_BY(mutex);
    std::vector<std::array<uint8_t, 6>> multicast ABSL_GUARDED_BY(mutex);
  };

  // Maps both rings (writable) and starts the thread. `notify(transmit, receive)` raises the
  // frontend's event channel(s) for new responses on either ring (from the thread; one call per
  // round: with a shared channel the caller raises it once). The memory, grant table and device
  // must outlive it. `shared`: the vif's other queues' (a Shared of its own when null).
  using Notify = std::function<void(bool transmit, bool receive)>;
  static absl::StatusOr<std::unique_ptr<NetRing>> Start(const memory::GuestMemory& memory, xen::GrantTable& grants,
                                                        const net::FrameDevice& device, Options options, Notify notify,
                                                        std::shared_ptr<Shared> shared = nullptr);
  ~NetRing();

  // The frontend's event: look at both rings.
  void Kick();
  NetRingStatistics Statistics() const;

 private:
  struct Ring {
    xen::GrantTable::Mapping mapping;
    uint32_t slots = 0;
    size_t slot_size = 0;
    uint32_t request_consumer = 0;
    uint32_t response_producer = 0;
    uint64_t Address(uint64_t offset) const { return (mapping.gfn << 12) + offset; }
    uint64_t SlotAddress(uint32_t index) const {
      return Address(netif::kRingHeaderSize + (index % slots) * slot_size);
    }
  };

  NetRing(const memory::GuestMemory& memory, xen::GrantTable& grants, const net::FrameDevice& device, Options options,
          Notify notify, std::shared_ptr<Shared> shared);
  void Run();
  // Each returns false once its ring is broken (the reason recorded).
  // Whether `bytes` may go now; if not, resume_at_ says when.
  bool Admit(bool transmit, uint64_t bytes);
  bool ServeTransmit(bool& notify);
  bool ServeReceive(bool& notify);
  void Transmit(const netif::TxPacket& packet, int16_t& status);
  // The checksum and segmentation of the packet in packet_, as the device takes them (done here
  // when it has no offloads); false when it cannot be sent (GSO to a device without offloads, or
  // over something other than TCP of the IP version it names).
  bool PrepareOffload(const netif::TxPacket& packet, net::FrameOffload& offload);
  // The GSO type a frame from the device goes to the frontend with (0: none), or nullopt when the
  // frontend cannot take it; a partial checksum it cannot take is completed here.
  std::optional<uint8_t> ReceiveOffload();
  // MCAST_ADD/DEL: NETIF_RSP_ERROR for an add beyond kMaxMulticastAddresses or of a unicast address.
  int16_t ChangeMulticast(const netif::ExtraInfo& extra);
  // Whether the frame in frame_ goes to the frontend (multicast control).
  bool Wanted() const;
  // Copies the held frame into the frontend's receive slots (data, the GSO extra after the first
  // when `gso_type` is not 0); false when the ring cannot be read or written.
  bool DeliverFrame(uint8_t gso_type);
  // Publishes the ring's responses; true when the frontend asked to hear about them (rsp_event).
  bool PublishResponses(Ring& ring, uint32_t published);
  std::optional<uint32_t> Produced(const Ring& ring);
  bool Break(std::string reason);

  const memory::GuestMemory& memory_;
  xen::GrantTable& grants_;
  const net::FrameDevice& device_;
  const Options options_;
  Notify notify_;
  const GuestOrder order_;
  std::optional<base::EventFd> wake_;

  // The thread's own.
  Ring tx_, rx_;
  std::vector<uint8_t> frame_;   // a frame from the tap
  net::FrameOffload frame_offload_;  // what is left to do to it
  uint8_t frame_gso_type_ = 0;       // the GSO type it goes to the frontend with (0: none)
  size_t frame_size_ = 0;        // non-zero: held until the frontend posts receive slots
  std::vector<uint8_t> packet_;  // a frame from the guest
  const std::shared_ptr<Shared> shared_;
  absl::Time resume_at_ = absl::InfiniteFuture();  // a direction waits for its bucket until then

  mutable absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  NetRingStatistics statistics_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_NET_RING_H_
