#include "components/xenbus/xen_net.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {

absl::StatusOr<std::unique_ptr<XenNet>> XenNet::Create(const Environment& environment, XenNetConfig config) {
  const std::string prefix = absl::StrCat("xen-net vif", config.devid, ": ");
  absl::StatusOr<net::Tap> tap = absl::InternalError("not opened");
  if (config.opened_tap) {
    absl::StatusOr<base::Fd> own = config.opened_tap->Duplicate();
    tap = own.ok() ? net::Tap::Adopt(std::move(*own)) : own.status();
  } else {
    tap = net::Tap::Open(config.tap);
  }
  if (!tap.ok()) return absl::Status(tap.status().code(), absl::StrCat(prefix, tap.status().message()));
  if (config.opened_tap) {
    config.tap = tap->name();  // set up by whoever opened it
  } else if (absl::Status up = tap->BringUp(config.mtu); !up.ok()) {
    return absl::Status(up.code(), absl::StrCat(prefix, up.message()));
  }
  if (!config.opened_tap && !config.bridge.empty()) {
    if (absl::Status joined = tap->AttachToBridge(config.bridge); !joined.ok()) {
      return absl::Status(joined.code(), absl::StrCat(prefix, joined.message()));
    }
  }
  auto device = std::unique_ptr<XenNet>(new XenNet(environment, std::move(config)));
  device->tap_ = std::move(*tap);
  const XenNetConfig& c = device->config_;
  const std::string mac = net::FormatMac(c.mac);
  const XenstoreNodes frontend = {{"handle", absl::StrCat(c.devid)}, {"mac", mac}};
  // GSO from the frontend only where the tap takes it on (IFF_VNET_HDR).
  const std::string gso = device->tap_->offloads() ? "1" : "0";
  const XenstoreNodes backend = {{"handle", absl::StrCat(c.devid)},
                                 {"mac", mac},
                                 {"bridge", c.bridge},
                                 {"type", "vif"},
                                 {"vifname", device->tap_->name()},
                                 {"feature-rx-copy", "1"},
                                 {"feature-rx-flip", "0"},
                                 {"feature-sg", "1"},
                                 {"feature-gso-tcpv4", gso},
                                 {"feature-gso-tcpv6", gso},
                                 {"feature-ipv6-csum-offload", "1"},
                                 {"feature-split-event-channels", "1"},
                                 {"feature-multicast-control", "1"}};
  if (absl::Status announced = device->Announce(frontend, backend); !announced.ok()) return announced;
  return device;
}

XenNet::XenNet(const Environment& environment, XenNetConfig config)
    : XenbusDevice(environment, "vif", absl::StrCat("xen-net vif", config.devid), config.devid),
      config_(std::move(config)) {}

XenNet::~XenNet() { Teardown(); }

std::optional<NetRingStatistics> XenNet::ring_statistics() const {
  if (!ring_) return std::nullopt;
  return ring_->Statistics();
}

NetRing::Options XenNet::RingOptions(uint32_t tx_ref, uint32_t rx_ref, bool scatter_gather) const {
  NetRing::Options options{tx_ref, rx_ref, scatter_gather};
  options.accelerator = environment_.accelerator;
  if (config_.tx_rate) {
    options.tx_bytes_per_second = config_.tx_rate->bytes_per_second;
    options.tx_burst = config_.tx_rate->burst_bytes();
  }
  if (config_.rx_rate) {
    options.rx_bytes_per_second = config_.rx_rate->bytes_per_second;
    options.rx_burst = config_.rx_rate->burst_bytes();
  }
  return options;
}

absl::Status XenNet::Connect() {
  const std::string prefix = Prefix();
  auto read_number = [&](const char* key) -> absl::StatusOr<uint32_t> {
    uint32_t value = 0;
    std::optional<std::string> text = ReadFrontend(key);
    if (!text || !absl::SimpleAtoi(*text, &value)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid ", key));
    }
    return value;
  };
  if (std::optional<std::string> queues = ReadFrontend("multi-queue-num-queues"); queues && *queues != "1") {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the frontend asks for ", *queues, " queues; this backend offers one"));
  }
  if (ReadFrontend("request-rx-copy").value_or("0") != "1") {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the frontend does not ask for request-rx-copy (page flipping is not offered)"));
  }
  XENKVM_ASSIGN_OR_RETURN(const uint32_t tx_ref, read_number("tx-ring-ref"));
  XENKVM_ASSIGN_OR_RETURN(const uint32_t rx_ref, read_number("rx-ring-ref"));
  // One event channel for both rings, or (feature-split-event-channels) one each.
  const bool split = ReadFrontend("event-channel-tx").has_value();
  XENKVM_ASSIGN_OR_RETURN(const uint32_t tx_port, read_number(split ? "event-channel-tx" : "event-channel"));
  XENKVM_ASSIGN_OR_RETURN(const uint32_t rx_port, read_number(split ? "event-channel-rx" : "event-channel"));
  if (split && tx_port == rx_port) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "event-channel-tx and event-channel-rx are one port, ", tx_port));
  }
  const bool scatter_gather = ReadFrontend("feature-sg").value_or("0") == "1";

  xen::EventChannels* events = environment_.event_channels;
  auto notify = [events, tx_port, rx_port](bool transmit, bool receive) {
    if (transmit) (void)events->NotifyGuest(tx_port);
    if (receive && (rx_port != tx_port || !transmit)) (void)events->NotifyGuest(rx_port);
  };
  NetRing::Options options = RingOptions(tx_ref, rx_ref, scatter_gather);
  options.multicast_control = ReadFrontend("request-multicast-control").value_or("0") == "1";
  XENKVM_RETURN_IF_ERROR(NegotiateReceiveOffloads(options));
  absl::StatusOr<std::unique_ptr<NetRing>> ring =
      NetRing::Start(*environment_.memory, *environment_.grant_table, *tap_, options, notify);
  if (!ring.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, ring.status().message()));
  ring_ = std::move(*ring);
  // Runs on the loop, as Disconnect does: the ring is there or not, never half gone. Either
  // channel kicks the one thread that serves both rings.
  for (uint32_t port : split ? std::vector<uint32_t>{tx_port, rx_port} : std::vector<uint32_t>{tx_port}) {
    XENKVM_RETURN_IF_ERROR(BindEventChannel(port, [this] {
      if (ring_) ring_->Kick();
    }));
  }
  XENKVM_RETURN_IF_ERROR(PublishConnected({}));
  spdlog::info("xen-net vif{}: connected to tap {} (mac {}{}{}{}{}{})", config_.devid, tap_->name(),
               net::FormatMac(config_.mac), scatter_gather ? ", scatter-gather" : "",
               split ? ", split event channels" : "", options.rx_partial_checksum ? ", rx checksum offload" : "",
               options.rx_gso_tcpv4 ? ", rx tso4" : "", options.rx_gso_tcpv6 ? ", rx tso6" : "");
  return absl::OkStatus();
}

absl::Status XenNet::NegotiateReceiveOffloads(NetRing::Options& options) {
  if (!tap_->offloads()) return absl::OkStatus();  // frames come whole and complete
  // As netback reads them: partial checksums unless feature-no-csum-offload (IPv6 ones only with
  // feature-ipv6-csum-offload; one switch on the tap covers both), GSO where the frontend names
  // it and can take a frame over several slots.
  auto flag = [this](const char* key) { return ReadFrontend(key).value_or("0") == "1"; };
  options.rx_partial_checksum = !flag("feature-no-csum-offload") && flag("feature-ipv6-csum-offload");
  options.rx_gso_tcpv4 = options.rx_partial_checksum && options.rx_scatter_gather && flag("feature-gso-tcpv4");
  options.rx_gso_tcpv6 = options.rx_partial_checksum && options.rx_scatter_gather && flag("feature-gso-tcpv6");
  absl::Status set = tap_->AcceptOffloads(options.rx_partial_checksum, options.rx_gso_tcpv4, options.rx_gso_tcpv6);
  if (!set.ok()) return absl::Status(set.code(), absl::StrCat(Prefix(), set.message()));
  return absl::OkStatus();
}

void XenNet::Disconnect() {
  UnbindEventChannel();
  if (ring_) {
    const NetRingStatistics moved = ring_->Statistics();
    spdlog::info("xen-net vif{}: disconnected after tx {} packets ({} segmentation-offloaded), rx {} ({})",
                 config_.devid, moved.tx_packets, moved.tx_segmentation_offloaded, moved.rx_packets,
                 moved.rx_segmentation_offloaded);
  }
  ring_.reset();
}

}  // namespace xenkvm::xenbus
