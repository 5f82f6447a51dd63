#include "components/xenbus/xen_disk.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "components/base/status.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {

absl::StatusOr<std::unique_ptr<XenDisk>> XenDisk::Create(const Environment& environment, XenDiskConfig config) {
  absl::StatusOr<uint32_t> devid = ParseVirtualDevice(config.vdev);
  if (!devid.ok()) return devid.status();
  absl::StatusOr<std::unique_ptr<block::Image>> image = absl::InternalError("not opened");
  if (config.opened) {
    absl::StatusOr<base::Fd> own = config.opened->Duplicate();
    image = own.ok() ? block::Image::Adopt(config.path, std::move(*own), config.read_only, config.cache) : own.status();
  } else {
    image = block::Image::Open(config.path, config.read_only, config.cache);
  }
  if (!image.ok()) {
    return absl::Status(image.status().code(), absl::StrCat("xen-disk ", config.vdev, ": ", image.status().message()));
  }
  auto disk = std::unique_ptr<XenDisk>(new XenDisk(environment, std::move(config), *devid));
  disk->image_ = std::move(*image);
  const XenDiskConfig& c = disk->config_;
  XenstoreNodes frontend = {{"virtual-device", absl::StrCat(*devid)}, {"device-type", "disk"}};
  XenstoreNodes backend = {{"removable", "0"},  {"bootable", "1"},        {"dev", c.vdev},
                           {"type", "file"},    {"mode", c.read_only ? "r" : "w"},
                           {"params", c.path},  {"device-type", "disk"}};
  if (c.max_indirect_segments > 0) {
    backend.emplace_back("feature-max-indirect-segments", absl::StrCat(c.max_indirect_segments));
  }
  // Read by the frontend when it sees InitWait, as blkback writes them at probe.
  if (c.max_queues > 1) backend.emplace_back("multi-queue-max-queues", absl::StrCat(c.max_queues));
  if (c.max_ring_page_order > 0) backend.emplace_back("max-ring-page-order", absl::StrCat(c.max_ring_page_order));
  if (absl::Status announced = disk->Announce(frontend, backend); !announced.ok()) return announced;
  return disk;
}

XenDisk::XenDisk(const Environment& environment, XenDiskConfig config, uint32_t devid)
    : XenbusDevice(environment, "vbd", absl::StrCat("xen-disk ", config.vdev), devid), config_(std::move(config)) {}

XenDisk::~XenDisk() { Teardown(); }

std::optional<DiskRingStatistics> XenDisk::ring_statistics() const {
  if (rings_.empty()) return std::nullopt;
  DiskRingStatistics total;
  for (const std::unique_ptr<DiskRing>& ring : rings_) total.Add(ring->Statistics());
  return total;
}

absl::Status XenDisk::Connect() {
  const std::string prefix = Prefix();
  uint32_t queues = 1, order = 0;
  if (std::optional<std::string> text = ReadFrontend("multi-queue-num-queues"); text) {
    if (!absl::SimpleAtoi(*text, &queues) || queues == 0 || queues > std::max(config_.max_queues, 1u)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend asks for ", *text,
                                                     " queues; multi-queue-max-queues is ", config_.max_queues));
    }
  }
  if (std::optional<std::string> text = ReadFrontend("ring-page-order"); text) {
    if (!absl::SimpleAtoi(*text, &order) || order > config_.max_ring_page_order) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend asks for a ring of page order ", *text,
                                                     "; max-ring-page-order is ", config_.max_ring_page_order));
    }
  }
  absl::StatusOr<blkif::Abi> abi = blkif::ParseProtocol(ReadFrontend("protocol").value_or(""));
  if (!abi.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, abi.status().message()));
  const bool persistent = config_.persistent_grants && ReadFrontend("feature-persistent").value_or("0") == "1";

  DiskRing::Options options;
  options.abi = *abi;
  options.persistent_grants = persistent;
  options.max_indirect_segments = config_.max_indirect_segments;
  options.flush = config_.flush;
  options.discard = config_.discard;
  options.accelerator = environment_.accelerator;
  for (uint32_t queue = 0; queue < queues; ++queue) {
    const std::string dir = queues == 1 ? "" : absl::StrCat("queue-", queue, "/");
    if (absl::Status connected = ConnectQueue(dir, 1u << order, options); !connected.ok()) {
      Disconnect();
      return connected;
    }
  }

  const bool discard = config_.discard && image_->supports_discard();
  const std::string block_size = absl::StrCat(image_->logical_block_size());
  XenstoreNodes nodes = {{"sectors", absl::StrCat(image_->sectors())},
                         {"info", config_.read_only ? "4" : "0"},  // VDISK_READONLY
                         {"sector-size", block_size},
                         {"physical-sector-size", block_size},
                         {"feature-flush-cache", config_.flush ? "1" : "0"},
                         {"feature-barrier", "0"},
                         {"feature-discard", discard ? "1" : "0"}};
  if (discard) {
    nodes.insert(nodes.end(), {{"discard-granularity", "4096"}, {"discard-alignment", "0"}, {"discard-secure", "0"}});
  }
  nodes.emplace_back("feature-persistent", config_.persistent_grants ? "1" : "0");
  XENKVM_RETURN_IF_ERROR(PublishConnected(nodes));
  spdlog::info("xen-disk {}: connected ({} sectors{}{}, {}, {} queue(s) of {} page(s), {}, cache={})", config_.vdev,
               image_->sectors(), config_.read_only ? ", read-only" : "", persistent ? ", persistent grants" : "",
               *abi == blkif::Abi::k64 ? "64-bit" : "32-bit", queues, 1u << order, rings_[0]->engine_name(),
               block::CacheModeName(config_.cache));
  return absl::OkStatus();
}

absl::Status XenDisk::ConnectQueue(const std::string& dir, uint32_t pages, DiskRing::Options options) {
  const std::string prefix = Prefix();
  for (uint32_t page = 0; page < pages; ++page) {
    // One page: ring-ref (ring-ref0 from some frontends); several: ring-ref0, ring-ref1, ...
    std::optional<std::string> text = ReadFrontend(absl::StrCat(dir, "ring-ref", pages == 1 ? "" : absl::StrCat(page)));
    if (!text && pages == 1) text = ReadFrontend(absl::StrCat(dir, "ring-ref0"));
    uint32_t gref = 0;
    if (!text || !absl::SimpleAtoi(*text, &gref)) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid ", dir, "ring-ref",
                                                     pages == 1 ? "" : absl::StrCat(page)));
    }
    options.ring_grefs.push_back(gref);
  }
  uint32_t port = 0;
  std::optional<std::string> port_text = ReadFrontend(dir + "event-channel");
  if (!port_text || !absl::SimpleAtoi(*port_text, &port)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid ", dir, "event-channel"));
  }
  xen::EventChannels* events = environment_.event_channels;
  absl::StatusOr<std::unique_ptr<DiskRing>> ring = DiskRing::Start(*environment_.grant_table, *image_, options,
                                                                   [events, port] { (void)events->NotifyGuest(port); });
  if (!ring.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, ring.status().message()));
  DiskRing* raw = ring->get();
  rings_.push_back(std::move(*ring));
  // Kicks run on the guest's vCPU threads until Disconnect unbinds them, before the rings go.
  return BindEventChannel(port, [raw] { raw->Kick(); });
}

void XenDisk::Disconnect() {
  UnbindEventChannel();
  rings_.clear();
}

}  // namespace xenkvm::xenbus
