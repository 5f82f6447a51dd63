// The VMM's private control service (proto/xenkvm/v1/vmm_control.proto), served to xenkvmd on a
// Unix socket only the VMM's owner can open, over vmm/control_protocol.h's frames.
#ifndef XENKVM_VMM_CONTROL_SERVER_H_
#define XENKVM_VMM_CONTROL_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "components/base/fd_handover.h"
#include "proto/xenkvm/v1/vm.pb.h"
#include "vmm/control_protocol.h"
#include "vmm/vm.h"

namespace xenkvm::vmm {

// The shim's statistics as the API reports them.
v1::EventChannelList EventChannelListFrom(const xen::ShimStatistics& statistics);

class ControlServer {
 public:
  // Listens on `socket_path` (replacing a stale socket file), mode 0600. `vm` must outlive it.
  // Hot-plug requests naming a handover token take their file from `handover` (may be null: such
  // requests are then refused).
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(const std::string& socket_path, Vm& vm,
                                                              base::FdHandoverServer* handover = nullptr);
  ~ControlServer();

 private:
  class Service;
  ControlServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<ControlSocketServer> socket_;  // destroyed first: its calls use the service
};

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_CONTROL_SERVER_H_
