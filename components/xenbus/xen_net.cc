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
  const XenstoreNodes backend = {{"handle", absl::StrCat(c.devid)},
                                 {"mac", mac},
                                 {"bridge", c.bridge},
                                 {"type", "vif"},
                                 {"vifname", device->tap_->name()},
                                 {"feature-rx-copy", "1"},
                                 {"feature-rx-flip", "0"},
                                 {"feature-sg", "1"},
                                 {"feature-gso-tcpv4", "0"},
                                 {"feature-gso-tcpv6", "0"},
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
  spdlog::info("xen-net vif{}: connected to tap {} (mac {}{}{})", config_.devid, tap_->name(),
               net::FormatMac(config_.mac), scatter_gather ? ", scatter-gather" : "",
               split ? ", split event channels" : "");
  return absl::OkStatus();
}

void XenNet::Disconnect() {
  UnbindEventChannel();
  ring_.reset();
}

}  // namespace xenkvm::xenbus
