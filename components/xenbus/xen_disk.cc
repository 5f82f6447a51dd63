#include "components/xenbus/xen_disk.h"

#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {
namespace {

using xen::xenstore::Access;
using xen::xenstore::Permissions;

std::optional<XenbusState> ParseState(const std::optional<std::string>& text) {
  int value = 0;
  if (!text || !absl::SimpleAtoi(*text, &value) || value < 0 || value > 8) return std::nullopt;
  return static_cast<XenbusState>(value);
}

}  // namespace

const char* XenbusStateName(XenbusState state) {
  static const char* const kNames[] = {"Unknown", "Initialising", "InitWait", "Initialised", "Connected",
                                       "Closing", "Closed", "Reconfiguring", "Reconfigured"};
  const int index = static_cast<int>(state);
  return index >= 0 && index < 9 ? kNames[index] : "?";
}

absl::StatusOr<std::unique_ptr<XenDisk>> XenDisk::Create(const Environment& environment, XenDiskConfig config) {
  absl::StatusOr<uint32_t> devid = ParseVirtualDevice(config.vdev);
  if (!devid.ok()) return devid.status();
  absl::StatusOr<std::unique_ptr<block::Image>> image = block::Image::Open(config.path, config.read_only);
  if (!image.ok()) {
    return absl::Status(image.status().code(), absl::StrCat("xen-disk ", config.vdev, ": ", image.status().message()));
  }
  auto disk = std::unique_ptr<XenDisk>(new XenDisk(environment, std::move(config), *devid));
  disk->image_ = std::move(*image);
  XenDisk* raw = disk.get();
  std::weak_ptr<bool> alive = disk->alive_;
  disk->client_ = environment.store->Connect(0, true, [raw, alive, loop = environment.loop](std::string_view,
                                                                                           std::string_view) {
    // Not from inside the store's own call: later, on the loop.
    (void)loop->Post([raw, alive] {
      if (alive.lock()) raw->FrontendChanged();
    });
  });
  if (absl::Status announced = disk->Announce(); !announced.ok()) return announced;
  return disk;
}

XenDisk::XenDisk(const Environment& environment, XenDiskConfig config, uint32_t devid)
    : environment_(environment),
      config_(std::move(config)),
      devid_(devid),
      backend_path_(absl::StrCat("/local/domain/0/backend/vbd/", environment.domid, "/", devid)),
      frontend_path_(absl::StrCat(xen::xenstore::Store::DomainPath(environment.domid), "/device/vbd/", devid)) {}

XenDisk::~XenDisk() {
  *alive_ = false;
  Disconnect();
  xen::xenstore::Store& store = *environment_.store;
  if (owns_nodes_) {  // a refused disk leaves the device that was there alone
    (void)store.Remove(client_, 0, backend_path_);
    (void)store.Remove(client_, 0, frontend_path_);
  }
  store.Disconnect(client_);
}

std::optional<std::string> XenDisk::Read(const std::string& path) const {
  auto value = environment_.store->Read(client_, 0, path);
  return value.ok() ? std::optional<std::string>(value.value()) : std::nullopt;
}

bool XenDisk::Write(const std::string& path, const std::string& value, uint32_t transaction) {
  return environment_.store->Write(client_, transaction, path, value).ok();
}

absl::Status XenDisk::Announce() {
  xen::xenstore::Store& store = *environment_.store;
  const uint32_t domid = environment_.domid;
  if (Read(frontend_path_) || Read(backend_path_)) {
    return absl::AlreadyExistsError(absl::StrCat("xen-disk ", config_.vdev, ": the guest has a device ", devid_,
                                                 " already"));
  }
  owns_nodes_ = true;
  // Directories first, with their owners: what is created below inherits them.
  const Permissions guest_reads{{0, Access::kNone}, {domid, Access::kRead}};
  const Permissions guest_owns{{domid, Access::kNone}, {0, Access::kRead}};
  const std::string device_dir = absl::StrCat(xen::xenstore::Store::DomainPath(domid), "/device/vbd");
  for (const auto& [path, permissions] :
       {std::pair{device_dir, guest_reads}, std::pair{frontend_path_, guest_owns}, std::pair{backend_path_, guest_reads}}) {
    if (!Read(path) && !Write(path, "")) return absl::InternalError(absl::StrCat("xenstore: cannot create ", path));
    if (!store.SetPermissions(client_, 0, path, permissions).ok()) {
      return absl::InternalError(absl::StrCat("xenstore: cannot set permissions of ", path));
    }
  }
  const std::pair<std::string, std::string> frontend[] = {
      {"backend", backend_path_}, {"backend-id", "0"}, {"virtual-device", absl::StrCat(devid_)},
      {"device-type", "disk"},    {"state", "1"}};
  for (const auto& [key, value] : frontend) Write(absl::StrCat(frontend_path_, "/", key), value);
  const std::pair<std::string, std::string> backend[] = {
      {"frontend", frontend_path_}, {"frontend-id", absl::StrCat(domid)}, {"online", "1"},
      {"removable", "0"},           {"bootable", "1"},                    {"dev", config_.vdev},
      {"type", "file"},             {"mode", config_.read_only ? "r" : "w"},
      {"params", config_.path},     {"device-type", "disk"}};
  for (const auto& [key, value] : backend) Write(absl::StrCat(backend_path_, "/", key), value);
  if (config_.max_indirect_segments > 0) {
    Write(absl::StrCat(backend_path_, "/feature-max-indirect-segments"), absl::StrCat(config_.max_indirect_segments));
  }
  SetBackendState(XenbusState::kInitWait);
  if (!store.Watch(client_, absl::StrCat(frontend_path_, "/state"), "frontend-state").ok()) {
    return absl::InternalError("xenstore: cannot watch the frontend's state");
  }
  return absl::OkStatus();
}

void XenDisk::SetBackendState(XenbusState state) {
  backend_state_ = state;
  Write(absl::StrCat(backend_path_, "/state"), absl::StrCat(static_cast<int>(state)));
}

XenbusState XenDisk::frontend_state() const {
  return ParseState(Read(absl::StrCat(frontend_path_, "/state"))).value_or(XenbusState::kUnknown);
}

std::optional<DiskRingStatistics> XenDisk::ring_statistics() const {
  if (!ring_) return std::nullopt;
  return ring_->Statistics();
}

void XenDisk::FrontendChanged() {
  const std::optional<XenbusState> state = ParseState(Read(absl::StrCat(frontend_path_, "/state")));
  switch (state.value_or(XenbusState::kUnknown)) {
    case XenbusState::kInitialised:
    case XenbusState::kConnected:
      if (backend_state_ == XenbusState::kInitWait && !removing_) {
        if (absl::Status connected = Connect(); !connected.ok()) {
          spdlog::warn("{}", std::string(connected.message()));
          Write(absl::StrCat(backend_path_, "/error"), std::string(connected.message()));
          SetBackendState(XenbusState::kClosing);
        }
      }
      break;
    case XenbusState::kClosing:
      Disconnect();
      SetBackendState(XenbusState::kClosing);
      break;
    case XenbusState::kInitialising:
      // A frontend starting over after Closed (a guest driver reloaded, kexec): offer the device again.
      if (backend_state_ == XenbusState::kClosed && !removing_) SetBackendState(XenbusState::kInitWait);
      break;
    case XenbusState::kClosed:
    case XenbusState::kUnknown:  // or the frontend's nodes are gone
    default:
      Disconnect();
      if (backend_state_ != XenbusState::kInitWait || removing_) SetBackendState(XenbusState::kClosed);
      if (removing_ && removal_done_) std::exchange(removal_done_, nullptr)();
      break;
  }
}

absl::Status XenDisk::Connect() {
  const std::string prefix = absl::StrCat("xen-disk ", config_.vdev, ": ");
  uint32_t ring_ref = 0, port = 0;
  if (std::optional<std::string> order = Read(absl::StrCat(frontend_path_, "/ring-page-order"));
      order && *order != "0") {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend asks for a multi-page ring (order ", *order,
                                                   "), which this backend does not offer"));
  }
  std::optional<std::string> ref_text = Read(absl::StrCat(frontend_path_, "/ring-ref"));
  if (!ref_text) ref_text = Read(absl::StrCat(frontend_path_, "/ring-ref0"));
  if (!ref_text || !absl::SimpleAtoi(*ref_text, &ring_ref)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid ring-ref"));
  }
  std::optional<std::string> port_text = Read(absl::StrCat(frontend_path_, "/event-channel"));
  if (!port_text || !absl::SimpleAtoi(*port_text, &port)) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "the frontend gave no valid event-channel"));
  }
  absl::StatusOr<blkif::Abi> abi = blkif::ParseProtocol(Read(absl::StrCat(frontend_path_, "/protocol")).value_or(""));
  if (!abi.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, abi.status().message()));
  const bool persistent =
      config_.persistent_grants && Read(absl::StrCat(frontend_path_, "/feature-persistent")).value_or("0") == "1";

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
  std::weak_ptr<bool> alive = alive_;
  // Runs on the loop, as Disconnect does: the ring is there or not, never half gone.
  absl::Status bound = events->BindBackend(port, [this, alive] {
    if (alive.lock() && ring_) ring_->Kick();
  });
  if (!bound.ok()) {
    ring_.reset();
    return absl::InvalidArgumentError(absl::StrCat(prefix, "event-channel ", port, ": ", bound.message()));
  }
  bound_port_ = port;

  // What the frontend needs, and Connected, in one transaction.
  xen::xenstore::Store& store = *environment_.store;
  const bool discard = config_.discard && image_->supports_discard();
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto transaction = store.TransactionStart(client_);
    if (!transaction.ok()) break;
    const uint32_t tx = transaction.value();
    auto put = [&](const char* key, const std::string& value) {
      Write(absl::StrCat(backend_path_, "/", key), value, tx);
    };
    put("sectors", absl::StrCat(image_->sectors()));
    put("info", config_.read_only ? "4" : "0");  // VDISK_READONLY
    put("sector-size", "512");
    put("physical-sector-size", "512");
    put("feature-flush-cache", config_.flush ? "1" : "0");
    put("feature-barrier", "0");
    put("feature-discard", discard ? "1" : "0");
    if (discard) {
      put("discard-granularity", "4096");
      put("discard-alignment", "0");
      put("discard-secure", "0");
    }
    put("feature-persistent", config_.persistent_grants ? "1" : "0");
    put("state", absl::StrCat(static_cast<int>(XenbusState::kConnected)));
    if (store.TransactionEnd(client_, tx, true).ok()) {
      backend_state_ = XenbusState::kConnected;
      spdlog::info("xen-disk {}: connected ({} sectors{}{}, {})", config_.vdev, image_->sectors(),
                   config_.read_only ? ", read-only" : "", persistent ? ", persistent grants" : "",
                   *abi == blkif::Abi::k64 ? "64-bit" : "32-bit");
      return absl::OkStatus();
    }
  }
  Disconnect();
  return absl::InternalError(absl::StrCat(prefix, "could not publish the disk's parameters in XenStore"));
}

void XenDisk::Disconnect() {
  if (bound_port_) {
    (void)environment_.event_channels->UnbindBackend(*bound_port_);
    bound_port_.reset();
  }
  ring_.reset();
}

void XenDisk::RequestRemoval(std::function<void()> closed) {
  removing_ = true;
  removal_done_ = std::move(closed);
  xen::xenstore::Store& store = *environment_.store;
  auto transaction = store.TransactionStart(client_);
  const uint32_t tx = transaction.ok() ? transaction.value() : 0;
  Write(absl::StrCat(backend_path_, "/online"), "0", tx);
  Write(absl::StrCat(backend_path_, "/state"), absl::StrCat(static_cast<int>(XenbusState::kClosing)), tx);
  if (tx != 0) (void)store.TransactionEnd(client_, tx, true);
  backend_state_ = XenbusState::kClosing;
  // A frontend that never connected (or has gone) has nothing to close.
  const XenbusState frontend = frontend_state();
  if (frontend == XenbusState::kInitialising || frontend == XenbusState::kClosed ||
      frontend == XenbusState::kUnknown) {
    Disconnect();
    SetBackendState(XenbusState::kClosed);
    if (removal_done_) std::exchange(removal_done_, nullptr)();
  }
}

}  // namespace xenkvm::xenbus
