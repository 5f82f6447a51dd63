// Helpers the daemon's files share (daemon.cc, daemon_supervision.cc, daemon_devices.cc); not API.
#ifndef XENKVM_API_DAEMON_INTERNAL_H_
#define XENKVM_API_DAEMON_INTERNAL_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/xenkvm/v1/vm.pb.h"

namespace xenkvm::api::daemon_internal {

inline constexpr size_t kMaxSocketPath = 107;  // sun_path, less the NUL
inline constexpr absl::Duration kVmmStartTimeout = absl::Seconds(10);
inline constexpr absl::Duration kKillGrace = absl::Seconds(3);
// Every call to a VMM ends by then: a VMM that does not answer (stopped, hung) fails only its own
// VM's calls, with DEADLINE_EXCEEDED, and never while the daemon-wide lock is held.
inline constexpr absl::Duration kVmmCallTimeout = absl::Seconds(5);
inline constexpr size_t kEventHistory = 1000;

inline int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

inline grpc::Status Error(grpc::StatusCode code, const std::string& message) { return grpc::Status(code, message); }

inline grpc::Status FromAbsl(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// A VMM call's failure as the API reports it: its code, its message under the VM's name.
inline grpc::Status VmError(const std::string& name, const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      absl::StrCat("VM \"", name, "\": ", status.message()));
}

inline bool Running(const v1::Vm& vm) {
  return vm.state() == v1::VM_STATE_RUNNING || vm.state() == v1::VM_STATE_PAUSED;
}

}  // namespace xenkvm::api::daemon_internal

#endif  // XENKVM_API_DAEMON_INTERNAL_H_
