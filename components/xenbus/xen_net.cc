#include "components/xenbus/xen_net.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {
namespace {

// The queues of a tap opened elsewhere, each descriptor copied (the caller keeps its own).
absl::StatusOr<std::vector<net::Tap>> AdoptQueues(const std::vector<std::shared_ptr<base::Fd>>& opened) {
  std::vector<net::Tap> taps;
  for (const std::shared_ptr<base::Fd>& fd : opened) {
    absl::StatusOr<base::Fd> own = fd->Duplicate();
    absl::StatusOr<net::Tap> adopted = own.ok() ? net::Tap::Adopt(std::move(*own)) : own.status();
    if (!adopted.ok()) return adopted.status();
    if (!taps.empty() && adopted->name() != taps.front().name()) {
      return absl::InvalidArgumentError(absl::StrCat("the queues handed over are of taps ", taps.front().name(),
                                                     " and ", adopted->name()));
    }
    taps.push_back(std::move(*adopted));
  }
  if (taps.size() > kMaxVifQueues) taps.erase(taps.begin() + kMaxVifQueues, taps.end());
  return taps;
}

}  // namespace

absl::StatusOr<std::unique_ptr<XenNet>> XenNet::Create(const Environment& environment, XenNetConfig config) {
  const std::string prefix = absl::StrCat("xen-net vif", config.devid, ": ");
  absl::StatusOr<std::vector<net::Tap>> taps =
      config.opened_tap.empty() ? net::Tap::OpenQueues(config.tap, kMaxVifQueues) : AdoptQueues(config.opened_tap);
  if (!taps.ok()) return absl::Status(taps.status().code(), absl::StrCat(prefix, taps.status().message()));
  net::Tap& tap = taps->front();
  if (!config.opened_tap.empty()) {
    config.tap = tap.name();  // set up by whoever opened it
  } else if (absl::Status up = tap.BringUp(config.mtu); !up.ok()) {
    return absl::Status(up.code(), absl::StrCat(prefix, up.message()));
  }
  if (config.opened_tap.empty() && !config.bridge.empty()) {
    if (absl::Status joined = tap.AttachToBridge(config.bridge); !joined.ok()) {
      return absl::Status(joined.code(), absl::StrCat(prefix, joined.message()));
    }
  }
  // The first queue stays attached; the others only while a frontend's queue serves them, so
  // the kernel does not steer frames to a queue nobody reads.
  for (size_t queue = 1; queue < taps->size(); ++queue) {
    if (absl::Status detached = (*taps)[queue].SetQueueAttached(false); !detached.ok()) {
      return absl::Status(detached.code(), absl::StrCat(prefix, detached.message()));
    }
  }
  auto device = std::unique_ptr<XenNet>(new XenNet(environment, std::move(config)));
  device->taps_ = std::move(*taps);
  const XenNetConfig& c = device->config_;
  const std::string mac = net::FormatMac(c.mac);
  const XenstoreNodes frontend = {{"handle", absl::StrCat(c.devid)}, {"mac", mac}};
  // GSO from the frontend only where the tap takes it on (IFF_VNET_HDR).
  const std::string gso = device->taps_.front().offloads() ? "1" : "0";
  XenstoreNodes backend = {{"handle", absl::StrCat(c.devid)},
                           {"mac", mac},
                           {"bridge", c.bridge},
                           {"type", "vif"},
                           {"vifname", device->tap_name()},
                           {"feature-rx-copy", "1"},
                           {"feature-rx-flip", "0"},
                           {"feature-sg", "1"},
                           {"feature-gso-tcpv4", gso},
                           {"feature-gso-tcpv6", gso},
                           {"feature-ipv6-csum-offload", "1"},
                           {"feature-split-event-channels", "1"},
                           {"feature-multicast-control", "1"}};
  if (device->taps_.size() > 1) backend.emplace_back("multi-queue-max-queues", absl::StrCat(device->taps_.size()));
  if (absl::Status announced = device->Announce(frontend, backend); !announced.ok()) return announced;
  return device;
}

XenNet::XenNet(const Environment& environment, XenNetConfig config)
    : XenbusDevice(environment, "vif", absl::StrCat("xen-net vif", config.devid), config.devid),
      config_(std::move(config)) {}

XenNet::~XenNet() { Teardown(); }

std::optional<NetRingStatistics> XenNet::ring_statistics() const {
  if (rings_.empty()) return std::nullopt;
  NetRingStatistics sum;
  for (const std::unique_ptr<NetRing>& ring : rings_) sum.Add(ring->Statistics());
  return sum;
}

NetRing::Options XenNet::RingOptions(bool scatter_gather) const {
  NetRing::Options options;
  options.rx_scatter_gather = scatter_gather;
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

absl::StatusOr<uint32_t> XenNet::ReadFrontendNumber(const std::string& key) const {
  uint32_t value = 0;
  std::optional<std::string> text = ReadFrontend(key);
  if (!text || !absl::SimpleAtoi(*text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(Prefix(), "the frontend gave no valid ", key));
  }
  return value;
}

absl::Status XenNet::Connect() {
  const std::string prefix = Prefix();
  uint32_t queues = 1;
  if (ReadFrontend("multi-queue-num-queues")) {
    XENKVM_ASSIGN_OR_RETURN(queues, ReadFrontendNumber("multi-queue-num-queues"));
  }
  if (queues == 0 || queues > taps_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend asks for ", queues,
                                                   " queues; multi-queue-max-queues is ", taps_.size()));
  }
  if (ReadFrontend("request-rx-copy").value_or("0") != "1") {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the frontend does not ask for request-rx-copy (page flipping is not offered)"));
  }
  // As netback: a held frame waits for the frontend's notification that it posted receive slots,
  // which only a frontend with feature-rx-notify sends.
  if (ReadFrontend("feature-rx-notify").value_or("0") != "1") {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "the frontend does not offer feature-rx-notify, which this backend requires (as netback does)"));
  }
  NetRing::Options options = RingOptions(ReadFrontend("feature-sg").value_or("0") == "1");
  options.multicast_control = ReadFrontend("request-multicast-control").value_or("0") == "1";
  XENKVM_RETURN_IF_ERROR(NegotiateReceiveOffloads(options));
  auto shared = std::make_shared<NetRing::Shared>(options);
  bool split = false;
  for (uint32_t queue = 0; queue < queues; ++queue) {
    XENKVM_RETURN_IF_ERROR(ConnectQueue(queue, queues == 1 ? "" : absl::StrCat("queue-", queue, "/"), options,
                                        shared, split));
  }
  XENKVM_RETURN_IF_ERROR(PublishConnected({}));
  spdlog::info("xen-net vif{}: connected to tap {} (mac {}, {} queue(s){}{}{}{}{})", config_.devid, tap_name(),
               net::FormatMac(config_.mac), queues, options.rx_scatter_gather ? ", scatter-gather" : "",
               split ? ", split event channels" : "", options.rx_partial_checksum ? ", rx checksum offload" : "",
               options.rx_gso_tcpv4 ? ", rx tso4" : "", options.rx_gso_tcpv6 ? ", rx tso6" : "");
  return absl::OkStatus();
}

absl::Status XenNet::ConnectQueue(uint32_t queue, const std::string& dir, NetRing::Options options,
                                  std::shared_ptr<NetRing::Shared> shared, bool& split) {
  XENKVM_ASSIGN_OR_RETURN(options.tx_ring_gref, ReadFrontendNumber(dir + "tx-ring-ref"));
  XENKVM_ASSIGN_OR_RETURN(options.rx_ring_gref, ReadFrontendNumber(dir + "rx-ring-ref"));
  // One event channel for both rings, or (feature-split-event-channels) one each.
  split = ReadFrontend(dir + "event-channel-tx").has_value();
  XENKVM_ASSIGN_OR_RETURN(const uint32_t tx_port, ReadFrontendNumber(dir + (split ? "event-channel-tx" : "event-channel")));
  XENKVM_ASSIGN_OR_RETURN(const uint32_t rx_port, ReadFrontendNumber(dir + (split ? "event-channel-rx" : "event-channel")));
  if (split && tx_port == rx_port) {
    return absl::InvalidArgumentError(
        absl::StrCat(Prefix(), dir, "event-channel-tx and event-channel-rx are one port, ", tx_port));
  }
  net::Tap& tap = taps_[queue];
  if (queue > 0) XENKVM_RETURN_IF_ERROR(tap.SetQueueAttached(true));
  xen::EventChannels* events = environment_.event_channels;
  auto notify = [events, tx_port, rx_port](bool transmit, bool receive) {
    if (transmit) (void)events->NotifyGuest(tx_port);
    if (receive && (rx_port != tx_port || !transmit)) (void)events->NotifyGuest(rx_port);
  };
  absl::StatusOr<std::unique_ptr<NetRing>> ring = NetRing::Start(
      *environment_.memory, *environment_.grant_table, tap, options, notify, std::move(shared));
  if (!ring.ok()) return absl::InvalidArgumentError(absl::StrCat(Prefix(), dir, ring.status().message()));
  NetRing* raw = ring->get();
  rings_.push_back(std::move(*ring));
  // Kicks run on the guest's vCPU threads until Disconnect unbinds them, before the rings go.
  // Either channel kicks the one thread that serves both rings.
  for (uint32_t port : split ? std::vector<uint32_t>{tx_port, rx_port} : std::vector<uint32_t>{tx_port}) {
    XENKVM_RETURN_IF_ERROR(BindEventChannel(port, [raw] { raw->Kick(); }));
  }
  return absl::OkStatus();
}

absl::Status XenNet::NegotiateReceiveOffloads(NetRing::Options& options) {
  net::Tap& tap = taps_.front();
  if (!tap.offloads()) return absl::OkStatus();  // frames come whole and complete
  // As netback reads them: partial checksums unless feature-no-csum-offload (IPv6 ones only with
  // feature-ipv6-csum-offload; one switch on the tap covers both), GSO where the frontend names
  // it and can take a frame over several slots.
  auto flag = [this](const char* key) { return ReadFrontend(key).value_or("0") == "1"; };
  options.rx_partial_checksum = !flag("feature-no-csum-offload") && flag("feature-ipv6-csum-offload");
  options.rx_gso_tcpv4 = options.rx_partial_checksum && options.rx_scatter_gather && flag("feature-gso-tcpv4");
  options.rx_gso_tcpv6 = options.rx_partial_checksum && options.rx_scatter_gather && flag("feature-gso-tcpv6");
  absl::Status set = tap.AcceptOffloads(options.rx_partial_checksum, options.rx_gso_tcpv4, options.rx_gso_tcpv6);
  if (!set.ok()) return absl::Status(set.code(), absl::StrCat(Prefix(), set.message()));
  return absl::OkStatus();
}

void XenNet::Disconnect() {
  UnbindEventChannel();
  if (std::optional<NetRingStatistics> moved = ring_statistics()) {
    spdlog::info("xen-net vif{}: disconnected after tx {} packets ({} segmentation-offloaded), rx {} ({})",
                 config_.devid, moved->tx_packets, moved->tx_segmentation_offloaded, moved->rx_packets,
                 moved->rx_segmentation_offloaded);
  }
  rings_.clear();
  for (size_t queue = 1; queue < taps_.size(); ++queue) (void)taps_[queue].SetQueueAttached(false);
}

}  // namespace xenkvm::xenbus
