// The XenBus side every PV backend shares, as libxl and Linux's backends do it: the device's
// frontend nodes under /local/domain/<domid>/device/<type>/<devid> (the guest's) and backend nodes
// under /local/domain/0/backend/<type>/<domid>/<devid> (dom0's, guest-readable), InitWait, the
// frontend's state followed (Initialised/Connected: the device connects and publishes what the
// frontend needs with Connected in one transaction; Closing/Closed: it disconnects; Initialising
// after Closed: offered again), and hot-unplug (online = 0 and Closing, then the frontend's Closed).
// A device refusing the frontend's parameters writes the reason in the backend's error node and
// goes to Closing.
//
// Runs on the VMM's backend event loop, which owns the XenStore.
#ifndef XENKVM_COMPONENTS_XENBUS_XENBUS_DEVICE_H_
#define XENKVM_COMPONENTS_XENBUS_XENBUS_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "components/accel/accelerator.h"
#include "components/base/event_loop.h"
#include "components/memory/guest_memory.h"
#include "components/xen/event_channels.h"
#include "components/xen/grant_table.h"
#include "components/xen/xenstore/store.h"

namespace xenkvm::xenbus {

// XenbusState.
enum class XenbusState : int {
  kUnknown = 0, kInitialising = 1, kInitWait = 2, kInitialised = 3, kConnected = 4, kClosing = 5, kClosed = 6,
  kReconfiguring = 7, kReconfigured = 8
};
const char* XenbusStateName(XenbusState state);

using XenstoreNodes = std::vector<std::pair<std::string, std::string>>;

class XenbusDevice {
 public:
  struct Environment {
    xen::xenstore::Store* store = nullptr;
    const memory::GuestMemory* memory = nullptr;
    xen::EventChannels* event_channels = nullptr;
    xen::GrantTable* grant_table = nullptr;
    base::EventLoop* loop = nullptr;  // the store's thread; devices are used only there
    uint32_t domid = 1;
    accel::Accelerator* accelerator = nullptr;  // the guest's vCPUs (guest_order.h); null in tests
  };

  virtual ~XenbusDevice();
  XenbusDevice(const XenbusDevice&) = delete;
  XenbusDevice& operator=(const XenbusDevice&) = delete;

  // Hot-unplug, gracefully: online = 0 and Closing, as libxl does; `closed` runs once the
  // frontend has closed (the device is then disconnected; destroy it to remove its nodes).
  void RequestRemoval(std::function<void()> closed);
  bool removal_requested() const { return removing_; }

  uint32_t device_id() const { return devid_; }
  XenbusState backend_state() const { return backend_state_; }
  XenbusState frontend_state() const;
  const std::string& backend_path() const { return backend_path_; }
  const std::string& frontend_path() const { return frontend_path_; }

 protected:
  // `type`: the XenStore device class ("vbd", "vif"); `name`: how messages name the device.
  XenbusDevice(const Environment& environment, std::string type, std::string name, uint32_t devid);

  // Writes the device's nodes (besides backend, frontend, their ids and state) and goes to
  // InitWait. kAlreadyExists when the guest has such a device already.
  absl::Status Announce(const XenstoreNodes& frontend, const XenstoreNodes& backend);
  // Subclass destructors call this first: the device disconnects while the subclass still exists.
  void Teardown();

  // The frontend is ready: read its nodes, start the data path, then PublishConnected. An error
  // (naming what was wrong) refuses the frontend.
  virtual absl::Status Connect() = 0;
  // Stops the data path; idempotent.
  virtual void Disconnect() = 0;

  // Binds the frontend's event channel `port` to `kick`, run on the guest's sending vCPU thread
  // (EventChannels::HandlerThread::kSender): it wakes the data path's own thread (an eventfd
  // write) or does a little of its work there (xen-disk's small reads; the vCPU waits for it).
  // Errors name the port. A device may bind several (xen-net's split channels).
  // UnbindEventChannel (idempotent) releases them all; no kick runs once it returned.
  absl::Status BindEventChannel(uint32_t port, std::function<void()> kick);
  void UnbindEventChannel();
  // `nodes` and Connected in one transaction.
  absl::Status PublishConnected(const XenstoreNodes& nodes);
  std::optional<std::string> ReadFrontend(const std::string& key) const;
  bool WriteBackend(const std::string& key, const std::string& value);
  // What the subclass's messages start with: "xen-disk xvda: ".
  std::string Prefix() const { return name_ + ": "; }

  const Environment environment_;
  // Callbacks from other threads check it before touching the device (reset by Teardown).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

 private:
  void FrontendChanged();
  void SetBackendState(XenbusState state);
  std::optional<std::string> Read(const std::string& path) const;
  bool Write(const std::string& path, const std::string& value, uint32_t transaction = 0);

  const std::string name_;
  const uint32_t devid_;
  const std::string backend_path_;
  const std::string frontend_path_;
  const std::string device_dir_;
  xen::xenstore::Store::ClientId client_ = 0;
  bool connected_to_store_ = false;
  XenbusState backend_state_ = XenbusState::kInitialising;
  std::function<void()> removal_done_;
  bool removing_ = false;
  bool owns_nodes_ = false;  // Announce created this device's nodes (Teardown removes them)
  std::vector<uint32_t> bound_ports_;
  bool torn_down_ = false;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_XENBUS_DEVICE_H_
