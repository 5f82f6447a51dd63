// xen-disk: one Xen PV block device (vbd) as the toolstack and blkback make it. It writes the
// device's XenStore nodes (the backend's under /local/domain/0/backend/vbd/<domid>/<devid>, the
// frontend's under /local/domain/<domid>/device/vbd/<devid>), follows the XenBus handshake
// (Initialising -> InitWait -> the frontend's ring-ref, event-channel, protocol -> Connected with
// sectors, info, sector-size and the features in one transaction), serves the ring with a
// DiskRing, and goes through Closing/Closed on the frontend's request or the host's (hot-unplug),
// reconnecting if the frontend starts over.
//
// Runs on the VMM's backend event loop, which owns the XenStore; the data path runs on the
// DiskRing's own thread.
#ifndef XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_
#define XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "components/base/event_loop.h"
#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xen/event_channels.h"
#include "components/xen/grant_table.h"
#include "components/xen/xenstore/store.h"
#include "components/xenbus/disk_ring.h"
#include "components/xenbus/vdev.h"

namespace xenkvm::xenbus {

// XenbusState.
enum class XenbusState : int {
  kUnknown = 0, kInitialising = 1, kInitWait = 2, kInitialised = 3, kConnected = 4, kClosing = 5, kClosed = 6,
  kReconfiguring = 7, kReconfigured = 8
};
const char* XenbusStateName(XenbusState state);

struct XenDiskConfig {
  std::string path;
  std::string vdev = "xvda";
  bool read_only = false;
  // What the backend offers the frontend.
  bool flush = true;
  bool discard = true;  // if the image can (a writable regular file)
  bool persistent_grants = true;
  uint32_t max_indirect_segments = 256;  // 0: no indirect requests
};

class XenDisk {
 public:
  struct Environment {
    xen::xenstore::Store* store = nullptr;
    const memory::GuestMemory* memory = nullptr;
    xen::EventChannels* event_channels = nullptr;
    xen::GrantTable* grant_table = nullptr;
    base::EventLoop* loop = nullptr;  // the store's thread; XenDisk is used only there
    uint32_t domid = 1;
  };

  // Opens the image and announces the device in XenStore (backend InitWait, frontend
  // Initialising). Errors name the image or the vdev.
  static absl::StatusOr<std::unique_ptr<XenDisk>> Create(const Environment& environment, XenDiskConfig config);
  // Disconnects and removes the device's nodes.
  ~XenDisk();

  // Hot-unplug, gracefully: online = 0 and Closing, as libxl does; `closed` runs once the
  // frontend has closed (the device is then disconnected; destroy it to remove its nodes).
  void RequestRemoval(std::function<void()> closed);
  bool removal_requested() const { return removing_; }

  uint32_t device_id() const { return devid_; }
  const XenDiskConfig& config() const { return config_; }
  XenbusState backend_state() const { return backend_state_; }
  XenbusState frontend_state() const;
  std::optional<DiskRingStatistics> ring_statistics() const;
  const std::string& backend_path() const { return backend_path_; }
  const std::string& frontend_path() const { return frontend_path_; }

 private:
  XenDisk(const Environment& environment, XenDiskConfig config, uint32_t devid);
  absl::Status Announce();
  void FrontendChanged();
  absl::Status Connect();
  void Disconnect();
  void SetBackendState(XenbusState state);
  std::optional<std::string> Read(const std::string& path) const;
  bool Write(const std::string& path, const std::string& value, uint32_t transaction = 0);

  const Environment environment_;
  const XenDiskConfig config_;
  const uint32_t devid_;
  const std::string backend_path_;
  const std::string frontend_path_;
  std::unique_ptr<block::Image> image_;
  xen::xenstore::Store::ClientId client_ = 0;
  XenbusState backend_state_ = XenbusState::kInitialising;
  std::unique_ptr<DiskRing> ring_;
  std::optional<uint32_t> bound_port_;
  std::function<void()> removal_done_;
  bool removing_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool owns_nodes_ = false;  // Announce created this device's XenStore nodes (the destructor removes them)
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_XEN_DISK_H_
