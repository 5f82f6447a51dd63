// xen-net: one Xen PV network device (vif) as the toolstack and netback make it, on a TAP device.
// Its XenBus life is XenbusDevice's (xenbus_device.h): the frontend's nodes carry handle and mac,
// the backend's the features offered (feature-rx-copy, feature-sg, checksum offload for IPv4 and
// IPv6, GSO tcpv4/tcpv6 when the tap has IFF_VNET_HDR, split event channels, multicast control,
// one queue); on the frontend's tx-ring-ref, rx-ring-ref, event-channel(s), request-rx-copy,
// feature-sg and its receive offloads (which the tap is told with TUNSETOFFLOAD) it serves both
// rings with a NetRing.
//
// Runs on the VMM's backend event loop, which owns the XenStore; the data path runs on the
// NetRing's own thread.
#ifndef XENKVM_COMPONENTS_XENBUS_XEN_NET_H_
#define XENKVM_COMPONENTS_XENBUS_XEN_NET_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

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
  const std::string& tap_name() const { return tap_->name(); }
  std::optional<NetRingStatistics> ring_statistics() const;

 private:
  XenNet(const Environment& environment, XenNetConfig config);
  absl::Status Connect() override;
  NetRing::Options RingOptions(uint32_t tx_ref, uint32_t rx_ref, bool scatter_gather) const;
  // What the frontend takes on receive (its feature-no-csum-offload, feature-ipv6-csum-offload,
  // feature-gso-tcpv4/6), into `options` and onto the tap.
  absl::Status NegotiateReceiveOffloads(NetRing::Options& options);
  void Disconnect() override;

  const XenNetConfig config_;
  std::optional<net::Tap> tap_;
  std::unique_ptr<NetRing> ring_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_XEN_NET_H_
