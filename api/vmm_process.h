// One VM's xenkvm-vmm as a process the daemon starts, watches and finds again after a restart:
// the files it keeps in the VM's state directory, spawning it in a session of its own (so that it
// outlives the daemon), watching a process that may not be the daemon's child (a pidfd), and the
// record of how a run ended, which the VMM writes itself and the daemon completes.
#ifndef XENKVM_API_VMM_PROCESS_H_
#define XENKVM_API_VMM_PROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace xenkvm::api {

// The files of one VM, all in its directory.
struct VmFiles {
  explicit VmFiles(const std::string& dir);
  std::string dir;
  std::string config;          // config.json: the VM's definition
  std::string control_socket;  // vmm.sock: the VMM's VmmControl
  std::string xenstore_socket; // xs.sock
  std::string pid;             // vmm.pid: the running VMM, while it runs
  std::string end;             // vmm.end: how the last run ended
  std::string vmm_log;         // vmm.log: the VMM's stderr
  std::string console_log;     // console.log: the guest's console, as the VMM writes it
  std::string handover_socket; // handover.sock: hot-plugged files opened here, handed to the VMM
  std::string jail;            // jail/: the empty root a VMM started by root is confined to
};

// Writes `content` to `path` so that a reader sees the old file or the whole new one: a temporary
// file in the same directory, fsync, rename, fsync of the directory. Errors name the file.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content);

// Starts `argv` (argv[0] the VMM binary) in its own session, stdin /dev/null, stdout appended to
// the console log (the previous run's kept as console.log.1), stderr to the VMM log; records its
// pid in the pid file. The VMM never writes to a pipe the daemon holds: it outlives the daemon.
absl::StatusOr<pid_t> SpawnVmm(const std::vector<std::string>& argv, const VmFiles& files);

// The VMM recorded in the pid file, if that process still runs and is the VMM of this VM (its
// command line names this VM's control socket: a reused pid is not taken for it).
std::optional<pid_t> FindRunningVmm(const VmFiles& files);

// What a process has used (from /proc/PID/stat): user + system CPU time, resident memory.
struct ProcessUsage {
  double cpu_seconds = 0;
  uint64_t rss_bytes = 0;
  // Per vCPU (index = vCPU id): the CPU time of the thread that runs its guest code, which the
  // backends name "vcpu<id>".
  std::vector<double> vcpu_seconds;
};
std::optional<ProcessUsage> ReadProcessUsage(pid_t pid);

// A process to wait for, child or not (pidfd_open): Wait returns true once it has ended.
class ProcessWatch {
 public:
  static absl::StatusOr<ProcessWatch> Open(pid_t pid);
  ProcessWatch(ProcessWatch&& other) noexcept;
  ProcessWatch& operator=(ProcessWatch&&) = delete;
  ~ProcessWatch();
  bool Wait(absl::Duration timeout);

 private:
  explicit ProcessWatch(int fd) : fd_(fd) {}
  int fd_;
};

// How a run ended: the VMM's exit status (xenkvm-vmm's codes, vmm/README.md) or the signal that
// ended it, and what it said.
struct RunEnd {
  std::optional<int> exit_status;
  std::optional<int> signal;
  bool destroyed = false;  // the daemon ended it on request
  std::string message;
};
// Collects the end of the VMM `pid` (which has ended): its exit status when it is the daemon's
// child (reaped here), else what the VMM wrote in the end file (xenkvm-vmm --status-file: "exit
// N\nMESSAGE\n"); the message, if the VMM left none, from its log. Then the end file holds the
// daemon's whole account and the pid file is gone. `pid` 0: a VMM known to have ended already.
RunEnd CollectRunEnd(pid_t pid, const VmFiles& files, bool destroyed);
// The account of the last run's end, if one was recorded (a VM that ended while no daemon ran).
std::optional<RunEnd> ReadRunEnd(const VmFiles& files);

}  // namespace xenkvm::api

#endif  // XENKVM_API_VMM_PROCESS_H_
