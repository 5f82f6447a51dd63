// xenkvmd's VmService: VM records kept in a state directory (locked: one daemon per directory), one
// xenkvm-vmm process per running VM (supervised: a VMM that dies is reported CRASHED with its
// reason; VMMs run in sessions of their own and are found again by a restarted daemon), console
// capture and streaming, lifecycle events, and gRPC status codes that say what was wrong.
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
#include "api/console_log.h"
#include "api/image_dirs.h"
#include "api/lifecycle_policy.h"
#include "api/metrics.h"
#include "api/vmm_process.h"
#include "proto/xenkvm/v1/vm.grpc.pb.h"
#include "vmm/control_protocol.h"

namespace xenkvm::api {

class Daemon final : public v1::VmService::Service {
 public:
  struct Options {
    std::string state_dir;
    std::string vmm_path;     // the xenkvm-vmm binary
    uint32_t max_vms = 64;
    // When the daemon stops: leave running VMs running (a restarted daemon finds them again)
    // instead of shutting them down.
    bool keep_vms = false;
    // Kernels, initrds and disk images must lie under these (empty: anywhere).
    std::vector<std::string> image_dirs;
    // Each VMM becomes this user once its VM is built (xenkvm-vmm --run-as); empty: stays root.
    std::string vmm_user;
  };
  // Creates the state directory if needed, locks it (kFailedPrecondition naming the holder when
  // another daemon has it), and loads the VMs defined there: VMMs still running are taken over as
  // they are; a VM whose VMM ended while no daemon ran shows how it ended.
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(const Options& options);
  ~Daemon() override;

  // Every VM as the metrics endpoint shows it: running ones with their VMMs' devices and event
  // channels (each VMM asked without the daemon lock, 1 s deadline).
  std::vector<VmSample> SampleVms();

  // Shuts every running VM down (ShutdownVm semantics with `deadline`), for SIGTERM.
  void ShutdownAll(absl::Duration deadline);
  // How many VMs run now.
  size_t RunningVms();

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
  grpc::Status AttachNetwork(grpc::ServerContext*, const v1::AttachNetworkRequest*, v1::Device*) override;
  grpc::Status DetachNetwork(grpc::ServerContext*, const v1::DetachNetworkRequest*, v1::DetachNetworkResponse*) override;
  grpc::Status ListDevices(grpc::ServerContext*, const v1::VmRef*, v1::ListDevicesResponse*) override;
  grpc::Status ListEventChannels(grpc::ServerContext*, const v1::VmRef*, v1::EventChannelList*) override;
  grpc::Status SetMemoryTarget(grpc::ServerContext*, const v1::SetMemoryTargetRequest*, v1::MemoryStatus*) override;
  grpc::Status GetMemory(grpc::ServerContext*, const v1::VmRef*, v1::MemoryStatus*) override;
  grpc::Status ReadHypervisorLog(grpc::ServerContext*, const v1::ReadHypervisorLogRequest*, v1::HypervisorLog*) override;
  grpc::Status StreamConsole(grpc::ServerContext*, const v1::StreamConsoleRequest*,
                             grpc::ServerWriter<v1::ConsoleChunk>*) override;
  grpc::Status Console(grpc::ServerContext*, grpc::ServerReaderWriter<v1::ConsoleChunk, v1::ConsoleInput>*) override;
  grpc::Status WatchEvents(grpc::ServerContext*, const v1::WatchEventsRequest*,
                           grpc::ServerWriter<v1::VmEvent>*) override;

 private:
  struct Record {
    explicit Record(const std::string& dir) : files(dir) {}
    v1::Vm vm;
    VmFiles files;
    pid_t pid = 0;
    bool destroying = false;
    bool started_emitted = false;
    bool guest_advertised_shutdown = false;  // the last RequestShutdown's answer
    uint64_t run = 0;  // bumped per start, so waiters know which run ended
    RestartBudget restarts;  // the on_* policies' restarts
    std::shared_ptr<ConsoleBuffer> console = std::make_shared<ConsoleBuffer>();
    std::shared_ptr<vmm::VmmControlClient> control;  // shared: a long call runs without the daemon lock
  };

  explicit Daemon(const Options& options) : options_(options) {}
  // Sends `name`'s console output through `write` (from the start of what is kept when `replay`)
  // until the run ends, `write` fails or the call is cancelled; only what is there when `follow`
  // is false.
  grpc::Status FollowConsole(grpc::ServerContext* context, const std::string& name, bool replay, bool follow,
                             const std::function<bool(const std::string&)>& write);
  absl::Status LockStateDir();
  absl::Status LoadState();
  // A VM found in the state directory: its VMM still running (taken over), or how its last run ended.
  void Recover(Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Makes `pid` the record's running VMM: its control channel and a supervisor thread.
  void Watch(Record& record, pid_t pid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // After a run ended on its own: the VM's on_poweroff / on_reboot / on_crash policy.
  void ApplyEndPolicy(Record& record, const RunEnd& end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
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
  // The running VMM's control client, and the socket it takes hot-plugged files on (when asked).
  grpc::Status RunningVmm(const std::string& name, std::shared_ptr<vmm::VmmControlClient>* control,
                          std::string* handover_socket = nullptr) ABSL_LOCKS_EXCLUDED(mutex_);
  // Calls the running VMM `name` (deadline kVmmCallTimeout, without the daemon lock); its errors
  // name the VM.
  template <typename Request, typename Reply>
  grpc::Status CallRunningVmm(const std::string& name,
                              absl::Status (vmm::VmmControlClient::*call)(const Request&, Reply*, absl::Duration) const,
                              const Request& request, Reply* reply);
  // After asking: destroys the run if it has not ended, with an end reason saying why.
  void FinishShutdown(Record& record, uint64_t run, const grpc::Status& asked) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends the VMM process (SIGTERM, then SIGKILL after a grace period) and waits for the supervisor.
  void Kill(Record& record, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Follows the VMM's console until it ends, then records how the run ended.
  void Supervise(std::string name, uint64_t run, pid_t pid, VmFiles files, std::shared_ptr<ConsoleBuffer> console);
  void Emit(v1::VmEvent::Kind kind, const std::string& name, const std::string& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void WaitForRunEnd(Record& record, uint64_t run, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  absl::Status CheckConfined(const v1::VmConfig& config) const;
  // Fills in a running VM's VMM CPU time and memory (from /proc: called without the daemon lock).
  static void AddUsage(v1::Vm& vm);

  const Options options_;
  ImageDirs image_dirs_;
  int lock_fd_ = -1;  // the state directory's lock, held while the daemon lives
  std::atomic<bool> detaching_{false};  // the daemon stops and leaves its VMs running
  std::atomic<bool> shutting_down_{false};  // ShutdownAll: no on_* restarts
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
