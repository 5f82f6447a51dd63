#include "components/xenbus/xenbus_device.h"

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

XenbusDevice::XenbusDevice(const Environment& environment, std::string type, std::string name, uint32_t devid)
    : environment_(environment),
      name_(std::move(name)),
      devid_(devid),
      backend_path_(absl::StrCat("/local/domain/0/backend/", type, "/", environment.domid, "/", devid)),
      frontend_path_(absl::StrCat(xen::xenstore::Store::DomainPath(environment.domid), "/device/", type, "/", devid)),
      device_dir_(absl::StrCat(xen::xenstore::Store::DomainPath(environment.domid), "/device/", type)) {
  std::weak_ptr<bool> alive = alive_;
  client_ = environment.store->Connect(0, true, [this, alive, loop = environment.loop](std::string_view,
                                                                                      std::string_view) {
    // Not from inside the store's own call: later, on the loop.
    (void)loop->Post([this, alive] {
      if (alive.lock()) FrontendChanged();
    });
  });
  connected_to_store_ = true;
}

XenbusDevice::~XenbusDevice() {
  // A subclass that forgot Teardown() still leaves the store consistent (its data path is gone).
  if (!torn_down_) {
    *alive_ = false;
    if (connected_to_store_) environment_.store->Disconnect(client_);
  }
}

void XenbusDevice::Teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  *alive_ = false;
  Disconnect();
  xen::xenstore::Store& store = *environment_.store;
  if (owns_nodes_) {  // a refused device leaves the device that was there alone
    (void)store.Remove(client_, 0, backend_path_);
    (void)store.Remove(client_, 0, frontend_path_);
  }
  store.Disconnect(client_);
}

std::optional<std::string> XenbusDevice::Read(const std::string& path) const {
  auto value = environment_.store->Read(client_, 0, path);
  return value.ok() ? std::optional<std::string>(value.value()) : std::nullopt;
}

bool XenbusDevice::Write(const std::string& path, const std::string& value, uint32_t transaction) {
  return environment_.store->Write(client_, transaction, path, value).ok();
}

std::optional<std::string> XenbusDevice::ReadFrontend(const std::string& key) const {
  return Read(absl::StrCat(frontend_path_, "/", key));
}

bool XenbusDevice::WriteBackend(const std::string& key, const std::string& value) {
  return Write(absl::StrCat(backend_path_, "/", key), value);
}

absl::Status XenbusDevice::Announce(const XenstoreNodes& frontend, const XenstoreNodes& backend) {
  xen::xenstore::Store& store = *environment_.store;
  const uint32_t domid = environment_.domid;
  if (Read(frontend_path_) || Read(backend_path_)) {
    return absl::AlreadyExistsError(absl::StrCat(Prefix(), "the guest has a device ", devid_, " already"));
  }
  owns_nodes_ = true;
  // Directories first, with their owners: what is created below inherits them.
  const Permissions guest_reads{{0, Access::kNone}, {domid, Access::kRead}};
  const Permissions guest_owns{{domid, Access::kNone}, {0, Access::kRead}};
  for (const auto& [path, permissions] : {std::pair{device_dir_, guest_reads}, std::pair{frontend_path_, guest_owns},
                                          std::pair{backend_path_, guest_reads}}) {
    if (!Read(path) && !Write(path, "")) return absl::InternalError(absl::StrCat("xenstore: cannot create ", path));
    if (!store.SetPermissions(client_, 0, path, permissions).ok()) {
      return absl::InternalError(absl::StrCat("xenstore: cannot set permissions of ", path));
    }
  }
  Write(absl::StrCat(frontend_path_, "/backend"), backend_path_);
  Write(absl::StrCat(frontend_path_, "/backend-id"), "0");
  for (const auto& [key, value] : frontend) Write(absl::StrCat(frontend_path_, "/", key), value);
  Write(absl::StrCat(frontend_path_, "/state"), "1");
  Write(absl::StrCat(backend_path_, "/frontend"), frontend_path_);
  Write(absl::StrCat(backend_path_, "/frontend-id"), absl::StrCat(domid));
  Write(absl::StrCat(backend_path_, "/online"), "1");
  for (const auto& [key, value] : backend) Write(absl::StrCat(backend_path_, "/", key), value);
  SetBackendState(XenbusState::kInitWait);
  if (!store.Watch(client_, absl::StrCat(frontend_path_, "/state"), "frontend-state").ok()) {
    return absl::InternalError("xenstore: cannot watch the frontend's state");
  }
  return absl::OkStatus();
}

void XenbusDevice::SetBackendState(XenbusState state) {
  backend_state_ = state;
  Write(absl::StrCat(backend_path_, "/state"), absl::StrCat(static_cast<int>(state)));
}

XenbusState XenbusDevice::frontend_state() const {
  return ParseState(Read(absl::StrCat(frontend_path_, "/state"))).value_or(XenbusState::kUnknown);
}

void XenbusDevice::FrontendChanged() {
  const std::optional<XenbusState> state = ParseState(Read(absl::StrCat(frontend_path_, "/state")));
  switch (state.value_or(XenbusState::kUnknown)) {
    case XenbusState::kInitialised:
    case XenbusState::kConnected:
      if (backend_state_ == XenbusState::kInitWait && !removing_) {
        if (absl::Status connected = Connect(); !connected.ok()) {
          Disconnect();
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

absl::Status XenbusDevice::BindEventChannel(uint32_t port, std::function<void()> kick) {
  std::weak_ptr<bool> alive = alive_;
  absl::Status bound = environment_.event_channels->BindBackend(
      port,
      [alive, kick = std::move(kick)] {
        if (alive.lock()) kick();
      },
      xen::EventChannels::HandlerThread::kSender);
  if (!bound.ok()) return absl::InvalidArgumentError(absl::StrCat(Prefix(), "event-channel ", port, ": ", bound.message()));
  bound_ports_.push_back(port);
  return absl::OkStatus();
}

void XenbusDevice::UnbindEventChannel() {
  for (uint32_t port : bound_ports_) (void)environment_.event_channels->UnbindBackend(port);
  bound_ports_.clear();
}

absl::Status XenbusDevice::PublishConnected(const XenstoreNodes& nodes) {
  xen::xenstore::Store& store = *environment_.store;
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto transaction = store.TransactionStart(client_);
    if (!transaction.ok()) break;
    const uint32_t tx = transaction.value();
    for (const auto& [key, value] : nodes) Write(absl::StrCat(backend_path_, "/", key), value, tx);
    Write(absl::StrCat(backend_path_, "/state"), absl::StrCat(static_cast<int>(XenbusState::kConnected)), tx);
    if (store.TransactionEnd(client_, tx, true).ok()) {
      backend_state_ = XenbusState::kConnected;
      return absl::OkStatus();
    }
  }
  return absl::InternalError(absl::StrCat(Prefix(), "could not publish the device's parameters in XenStore"));
}

void XenbusDevice::RequestRemoval(std::function<void()> closed) {
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
