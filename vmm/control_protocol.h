// The VMM's private control protocol (proto/xenkvm/v1/vmm_control.proto) between xenkvmd and one
// xenkvm-vmm, on a Unix stream socket only their user (or root) can open. Each call is a VmmCall
// frame answered by a VmmCallResult frame; a frame is a 4-byte little-endian length and then that
// many bytes of one serialized message. Not gRPC on purpose: the VMM then links no HTTP/2 stack,
// whose start-up work (hundreds of static constructors touching pages across the binary) cost
// each VMM about 1 CPU ms and 2.3 MiB before its guest ran (vmm/README.md).
#ifndef XENKVM_VMM_CONTROL_PROTOCOL_H_
#define XENKVM_VMM_CONTROL_PROTOCOL_H_

#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "components/base/fd.h"
#include "google/protobuf/message_lite.h"
#include "proto/xenkvm/v1/vmm_control.pb.h"

namespace xenkvm::vmm {

// Larger frames are refused (the largest real one, a hypervisor log, is well under 1 MiB).
inline constexpr size_t kMaxControlFrame = 16 << 20;

// Writes `message` as one frame; fails (kDeadlineExceeded) if the peer takes none of it by `deadline`.
absl::Status WriteControlFrame(int fd, const google::protobuf::MessageLite& message, absl::Time deadline);

// Reads one frame into `message`. kOutOfRange at a clean end of the stream before a frame,
// kDeadlineExceeded past `deadline`, kInvalidArgument for an oversized or malformed frame.
absl::Status ReadControlFrame(int fd, google::protobuf::MessageLite& message, absl::Time deadline);

// xenkvmd's side: one connection per call, so calls to one VMM run side by side (a disk's detach
// waits for its frontend while status calls go on). Thread-safe; holds no connection.
class VmmControlClient {
 public:
  explicit VmmControlClient(std::string socket_path) : socket_path_(std::move(socket_path)) {}

  // Calls `method` (an rpc of VmmControl, by name) and waits up to `timeout` for its answer: the
  // VMM's own status, or kUnavailable when it cannot be reached, kDeadlineExceeded when it did not
  // answer in time.
  absl::Status Call(const std::string& method, const google::protobuf::MessageLite& request,
                    google::protobuf::MessageLite* reply, absl::Duration timeout) const;

  // The calls, typed as vmm_control.proto declares them; each sends its own name.
#define XENKVM_VMM_CONTROL_CALL(Name, Request, Reply)                                             \
  absl::Status Name(const v1::Request& request, v1::Reply* reply, absl::Duration timeout) const { \
    return Call(#Name, request, reply, timeout);                                                  \
  }
  XENKVM_VMM_CONTROL_CALL(Status, VmmStatusRequest, VmmStatus)
  XENKVM_VMM_CONTROL_CALL(Pause, VmmPauseRequest, VmmReply)
  XENKVM_VMM_CONTROL_CALL(Resume, VmmResumeRequest, VmmReply)
  XENKVM_VMM_CONTROL_CALL(RequestShutdown, VmmShutdownRequest, VmmShutdownReply)
  XENKVM_VMM_CONTROL_CALL(EventChannels, VmmEventChannelsRequest, EventChannelList)
  XENKVM_VMM_CONTROL_CALL(AttachDisk, VmmAttachDiskRequest, Device)
  XENKVM_VMM_CONTROL_CALL(DetachDisk, VmmDetachDiskRequest, VmmDetachDiskReply)
  XENKVM_VMM_CONTROL_CALL(AttachNetwork, VmmAttachNetworkRequest, Device)
  XENKVM_VMM_CONTROL_CALL(DetachNetwork, VmmDetachNetworkRequest, VmmDetachDiskReply)
  XENKVM_VMM_CONTROL_CALL(Devices, VmmDevicesRequest, ListDevicesResponse)
  XENKVM_VMM_CONTROL_CALL(WriteConsole, VmmConsoleInput, VmmConsoleInputReply)
  XENKVM_VMM_CONTROL_CALL(SetMemoryTarget, VmmMemoryTargetRequest, MemoryStatus)
  XENKVM_VMM_CONTROL_CALL(Memory, VmmMemoryRequest, MemoryStatus)
  XENKVM_VMM_CONTROL_CALL(ReadHypervisorLog, VmmHypervisorLogRequest, HypervisorLog)
#undef XENKVM_VMM_CONTROL_CALL

 private:
  std::string socket_path_;
};

// The VMM's side: accepts connections from root or its own user and answers each call through
// `handler` on the connection's own thread (at most kMaxConnections at once; more are answered
// kResourceExhausted and closed).
class ControlSocketServer {
 public:
  // Answers `method` with `request` (serialized); fills `reply` (serialized) when OK.
  using Handler =
      std::function<absl::Status(const std::string& method, const std::string& request, std::string* reply)>;
  static constexpr size_t kMaxConnections = 16;

  // Listens on `socket_path` (a stale socket file is replaced), mode 0600.
  static absl::StatusOr<std::unique_ptr<ControlSocketServer>> Start(const std::string& socket_path, Handler handler);
  // Stops accepting, ends the connections, waits for the calls in progress, removes the socket file.
  ~ControlSocketServer();
  ControlSocketServer(const ControlSocketServer&) = delete;
  ControlSocketServer& operator=(const ControlSocketServer&) = delete;

 private:
  struct Connection {
    base::Fd fd;
    std::thread thread;
    bool finished = false;
  };
  ControlSocketServer(std::string socket_path, base::Fd listener, uid_t owner, Handler handler)
      : socket_path_(std::move(socket_path)),
        listener_(std::move(listener)),
        owner_(owner),
        handler_(std::move(handler)) {}
  void Accept();
  void Serve(Connection& connection);
  void JoinFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string socket_path_;
  base::Fd listener_;
  const uid_t owner_;  // besides root, the only user who may connect
  const Handler handler_;
  std::thread acceptor_;
  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::list<Connection> connections_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace xenkvm::vmm

#endif  // XENKVM_VMM_CONTROL_PROTOCOL_H_
