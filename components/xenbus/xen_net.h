// xen-net: one Xen PV network device (vif) as the toolstack and netback make it, on a TAP device.
// Its XenBus life is XenbusDevice's (xenbus_device.h): the frontend's nodes carry handle and mac,
// the backend's the features offered (feature-rx-copy, feature-sg, checksum offload for IPv4 and
// IPv6, GSO tcpv4/tcpv6 when the tap has IFF_VNET_HDR, split event channels, multicast control,
// multi-queue-max-queues when the tap has several queues); on the frontend's
// multi-queue-num-queues, each queue's tx-ring-ref, rx-ring-ref and event-channel(s) (flat for one
// queue, under queue-N/ for several), request-rx-copy, feature-sg and its receive offloads (which
// the tap is told with TUNSETOFFLOAD) it serves each queue's rings with a NetRing on a tap queue
// of its own.
//
// Runs on the VMM's backend event loop, which owns the XenStore; the data path runs on the
// NetRing's own thread.
#ifndef XENKVM_COMPONENTS_XENBUS_XEN_NET_H_
#define XENKVM_COMPONENTS_XENBUS_XEN_NET_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "components/net/mac_address.h"
#include "components/net/tap.h"
#include "components/xenbus/net_ring.h"
#include "components/xenbus/vif_spec.h"
#include "components/xenbus/xenbus_device.h"

namespace xenkvm::xenbus {

class XenNet final : public XenbusDevice {
 public:
  // Opens (or creates) the tap, brings it up, joins the bridge, and announces the device in
  // XenStore. Errors name the vif and the tap.
  static absl::StatusOr<std::unique_ptr<XenNet>> Create(const Environment& environment, XenNetConfig config);
  ~XenNet() override;

  const XenNetConfig& config() const { return config_; }
  const std::string& tap_name() const { return taps_.front().name(); }
  std::optional<NetRingStatistics> ring_statistics() const;

 private:
  XenNet(const Environment& environment, XenNetConfig config);
  absl::Status Connect() override;
  NetRing::Options RingOptions(bool scatter_gather) const;
  absl::StatusOr<uint32_t> ReadFrontendNumber(const std::string& key) const;
  // One queue's rings (its keys under `dir`) on tap queue `queue`; `split` says whether its
  // frontend chose split event channels.
  absl::Status ConnectQueue(uint32_t queue, const std::string& dir, NetRing::Options options,
                            std::shared_ptr<NetRing::Shared> shared, bool& split);
  // What the frontend takes on receive (its feature-no-csum-offload, feature-ipv6-csum-offload,
  // feature-gso-tcpv4/6), into `options` and onto the tap.
  absl::Status NegotiateReceiveOffloads(NetRing::Options& options);
  void Disconnect() override;

  const XenNetConfig config_;
  std::vector<net::Tap> taps_;  // one a queue; the first always attached
  std::vector<std::unique_ptr<NetRing>> rings_;  // one a connected queue
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_XEN_NET_H_
