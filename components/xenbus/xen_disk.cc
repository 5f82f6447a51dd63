#include "components/xenbus/xen_disk.h"

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
    image = own.ok() ? block::Image::Adopt(config.path, std::move(*own), config.read_only) : own.status();
  } else {
    image = block::Image::Open(config.path, config.read_only);
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
  if (absl::Status announced = disk->Announce(frontend, backend); !announced.ok()) return announced;
  return disk;
}

XenDisk::XenDisk(const Environment& environment, XenDiskConfig config, uint32_t devid)
    : XenbusDevice(environment, "vbd", absl::StrCat("xen-disk ", config.vdev), devid), config_(std::move(config)) {}

XenDisk::~XenDisk() { Teardown(); }

std::optional<DiskRingStatistics> XenDisk::ring_statistics() const {
  if (!ring_) return std::nullopt;
  return ring_->Statistics();
}

absl::Status XenDisk::Connect() {
  const std::string prefix = Prefix();
  uint32_t ring_ref = 0, port = 0;
  if (std::optional<std::string> order = ReadFrontend("ring-page-order"); order && *order != "0") {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend asks for a multi-page ring (order ", *order,
                                                   "), which this backend does not offer"));
  }
  std::optional<std::string> ref_text = ReadFrontend("ring-ref");
  if (!ref_text) ref_text = ReadFrontend("ring-ref0");
  if (!ref_text || !absl::SimpleAtoi(*ref_text, &ring_ref)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid ring-ref"));
  }
  std::optional<std::string> port_text = ReadFrontend("event-channel");
  if (!port_text || !absl::SimpleAtoi(*port_text, &port)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid event-channel"));
  }
  absl::StatusOr<blkif::Abi> abi = blkif::ParseProtocol(ReadFrontend("protocol").value_or(""));
  if (!abi.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, abi.status().message()));
  const bool persistent = config_.persistent_grants && ReadFrontend("feature-persistent").value_or("0") == "1";

  DiskRing::Options options;
  options.abi = *abi;
  options.ring_gref = ring_ref;
  options.persistent_grants = persistent;
  options.max_indirect_segments = config_.max_indirect_segments;
  options.flush = config_.flush;
  options.discard = config_.discard;
  xen::EventChannels* events = environment_.event_channels;
  absl::StatusOr<std::unique_ptr<DiskRing>> ring =
      DiskRing::Start(*environment_.memory, *environment_.grant_table, *image_, options,
                      [events, port] { (void)events->NotifyGuest(port); });
  if (!ring.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, ring.status().message()));
  ring_ = std::move(*ring);
  // Runs on the loop, as Disconnect does: the ring is there or not, never half gone.
  XENKVM_RETURN_IF_ERROR(BindEventChannel(port, [this] {
    if (ring_) ring_->Kick();
  }));

  const bool discard = config_.discard && image_->supports_discard();
  XenstoreNodes nodes = {{"sectors", absl::StrCat(image_->sectors())},
                         {"info", config_.read_only ? "4" : "0"},  // VDISK_READONLY
                         {"sector-size", "512"},
                         {"physical-sector-size", "512"},
                         {"feature-flush-cache", config_.flush ? "1" : "0"},
                         {"feature-barrier", "0"},
                         {"feature-discard", discard ? "1" : "0"}};
  if (discard) {
    nodes.insert(nodes.end(), {{"discard-granularity", "4096"}, {"discard-alignment", "0"}, {"discard-secure", "0"}});
  }
  nodes.emplace_back("feature-persistent", config_.persistent_grants ? "1" : "0");
  XENKVM_RETURN_IF_ERROR(PublishConnected(nodes));
  spdlog::info("xen-disk {}: connected ({} sectors{}{}, {})", config_.vdev, image_->sectors(),
               config_.read_only ? ", read-only" : "", persistent ? ", persistent grants" : "",
               *abi == blkif::Abi::k64 ? "64-bit" : "32-bit");
  return absl::OkStatus();
}

void XenDisk::Disconnect() {
  UnbindEventChannel();
  ring_.reset();
}

}  // namespace xenkvm::xenbus
