// xenkvmd's VmService: VM records kept in a state directory, one xenkvm-vmm process per running VM
// (supervised: a VMM that dies is reported CRASHED with its reason), console capture and
// streaming, lifecycle events, and gRPC status codes that say what was wrong.
#ifndef XENKVM_API_DAEMON_H_
#define XENKVM_API_DAEMON_H_

#include <sys/types.h>

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/xenkvm/v1/vm.grpc.pb.h"
#include "proto/xenkvm/v1/vmm_control.grpc.pb.h"

namespace xenkvm::api {

// Bytes a guest wrote, the last `limit` kept, with a running offset so followers see only new data.
class ConsoleBuffer {
 public:
  explicit ConsoleBuffer(size_t limit = 64 * 1024) : limit_(limit) {}
  void Append(const char* data, size_t size);
  // The bytes from `offset` (total bytes ever written), clipped to what is kept; updates `offset`.
  std::string ReadFrom(uint64_t& offset) const;
  uint64_t total() const;
  // Waits up to `timeout` for bytes beyond `offset`.
  void WaitBeyond(uint64_t offset, absl::Duration timeout) const;

 private:
  const size_t limit_;
  mutable absl::Mutex mutex_;
  std::deque<char> bytes_ ABSL_GUARDED_BY(mutex_);
  uint64_t total_ ABSL_GUARDED_BY(mutex_) = 0;
};

class Daemon final : public v1::VmService::Service {
 public:
  struct Options {
    std::string state_dir;
    std::string vmm_path;     // the xenkvm-vmm binary
    uint32_t max_vms = 64;
  };
  // Creates the state directory if needed and loads the VMs defined there (as CREATED).
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(const Options& options);
  ~Daemon() override;

  // Shuts every running VM down (ShutdownVm semantics with `deadline`), for SIGTERM.
  void ShutdownAll(absl::Duration deadline);

  grpc::Status CreateVm(grpc::ServerContext*, const v1::CreateVmRequest*, v1::Vm*) override;
  grpc::Status StartVm(grpc::ServerContext*, const v1::VmRef*, v1::Vm*) override;
  grpc::Status PauseVm(grpc::ServerContext*, const v1::VmRef*, v1::Vm*) override;
  grpc::Status ResumeVm(grpc::ServerContext*, const v1::VmRef*, v1::Vm*) override;
  grpc::Status ShutdownVm(grpc::ServerContext*, const v1::ShutdownVmRequest*, v1::Vm*) override;
  grpc::Status DestroyVm(grpc::ServerContext*, const v1::VmRef*, v1::Vm*) override;
  grpc::Status DeleteVm(grpc::ServerContext*, const v1::VmRef*, v1::DeleteVmResponse*) override;
  grpc::Status GetVm(grpc::ServerContext*, const v1::VmRef*, v1::Vm*) override;
  grpc::Status ListVms(grpc::ServerContext*, const v1::ListVmsRequest*, v1::ListVmsResponse*) override;
  grpc::Status AttachDisk(grpc::ServerContext*, const v1::AttachDiskRequest*, v1::Device*) override;
  grpc::Status DetachDisk(grpc::ServerContext*, const v1::DetachDiskRequest*, v1::DetachDiskResponse*) override;
  grpc::Status ListDevices(grpc::ServerContext*, const v1::VmRef*, v1::ListDevicesResponse*) override;
  grpc::Status ListEventChannels(grpc::ServerContext*, const v1::VmRef*, v1::EventChannelList*) override;
  grpc::Status StreamConsole(grpc::ServerContext*, const v1::StreamConsoleRequest*,
                             grpc::ServerWriter<v1::ConsoleChunk>*) override;
  grpc::Status WatchEvents(grpc::ServerContext*, const v1::WatchEventsRequest*,
                           grpc::ServerWriter<v1::VmEvent>*) override;

 private:
  struct Record {
    v1::Vm vm;
    std::string dir;
    std::string control_socket;
    pid_t pid = 0;
    bool destroying = false;
    bool started_emitted = false;
    bool guest_advertised_shutdown = false;  // the last RequestShutdown's answer
    uint64_t run = 0;  // bumped per start, so waiters know which run ended
    std::shared_ptr<ConsoleBuffer> console = std::make_shared<ConsoleBuffer>();
    std::shared_ptr<v1::VmmControl::Stub> control;  // shared: a long call runs without the daemon lock
  };

  explicit Daemon(const Options& options) : options_(options) {}
  absl::Status LoadState();
  // Records are shared: an operation that waits (unlocking) keeps its record alive even if a
  // concurrent DeleteVm removes it from the map.
  std::shared_ptr<Record> Find(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  grpc::Status Lookup(const std::string& name, std::shared_ptr<Record>* record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  grpc::Status Start(Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  grpc::Status SetPaused(const std::string& name, bool pause, v1::Vm* reply);
  // Asks the guest to power off; destroys the VM after `timeout`, or at once when it cannot be asked.
  // Asks the guest to shut down for `reason` through its XenStore, waits up to `timeout` for it to
  // end, then destroys it. Not OK only for a reason the VMM refuses.
  grpc::Status Shutdown(Record& record, const std::string& reason, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  grpc::Status AskShutdown(Record& record, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  grpc::Status RunningVmm(const std::string& name, std::shared_ptr<v1::VmmControl::Stub>* control)
      ABSL_LOCKS_EXCLUDED(mutex_);
  // After asking: destroys the run if it has not ended, with an end reason saying why.
  void FinishShutdown(Record& record, uint64_t run, const grpc::Status& asked) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends the VMM process (SIGTERM, then SIGKILL after a grace period) and waits for the supervisor.
  void Kill(Record& record, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Supervise(std::string name, uint64_t run, pid_t pid, int console_fd, std::shared_ptr<ConsoleBuffer> console);
  void Emit(v1::VmEvent::Kind kind, const std::string& name, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WaitForRunEnd(Record& record, uint64_t run, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const Options options_;
  absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<Record>> vms_ ABSL_GUARDED_BY(mutex_);
  std::deque<v1::VmEvent> events_ ABSL_GUARDED_BY(mutex_);
  uint64_t events_emitted_ ABSL_GUARDED_BY(mutex_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  struct Supervisor {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Supervisor> supervisors_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace xenkvm::api

#endif  // XENKVM_API_DAEMON_H_
