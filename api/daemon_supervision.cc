// xenkvmd: starting VMMs, watching them, ending them, and what happens when a run ends.
#include "api/daemon.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "api/config.h"
#include "api/daemon_internal.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"

namespace xenkvm::api {

using namespace daemon_internal;  // NOLINT: the daemon's own helpers

grpc::Status Daemon::Start(Record& record) {
  const std::string& name = record.vm.config().name();
  if (Running(record.vm)) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat("VM \"", name, "\" is already ", VmStateName(record.vm.state())));
  }
  if (absl::Status confined = CheckConfined(record.vm.config()); !confined.ok()) return FromAbsl(confined);
  unlink(record.files.control_socket.c_str());  // a previous run's: the wait below looks for the new one
  std::vector<std::string> args = {options_.vmm_path};
  for (std::string& arg : VmmArguments(record.vm.config(), record.files.control_socket, record.files.xenstore_socket)) {
    args.push_back(std::move(arg));
  }
  args.insert(args.end(), {"--status-file", record.files.end, "--handover-socket", record.files.handover_socket});
  if (!options_.vmm_user.empty()) args.insert(args.end(), {"--run-as", options_.vmm_user});
  if (geteuid() == 0) {
    // Root can confine each VMM to an empty root of its own (vmm/jail.h); hot-plugged files come
    // through the handover socket.
    if (mkdir(record.files.jail.c_str(), 0755) != 0 && errno != EEXIST) {
      return Error(grpc::StatusCode::INTERNAL, absl::StrCat("cannot make ", record.files.jail, ": ", std::strerror(errno)));
    }
    args.insert(args.end(), {"--jail", record.files.jail});
  }
  absl::StatusOr<pid_t> spawned = SpawnVmm(args, record.files);
  if (!spawned.ok()) return FromAbsl(spawned.status());
  const pid_t pid = *spawned;
  record.vm.set_end_reason("");
  record.vm.set_exit_status(-1);
  record.vm.set_started_unix_ms(NowMs());
  record.started_emitted = false;
  Watch(record, pid);
  const uint64_t run = record.run;

  // Wait (without the lock) until the VMM answers on its control socket, or ends: first for the
  // file, then for an answer (a refusal comes at once, before the VMM listens: retried shortly).
  const std::shared_ptr<vmm::VmmControlClient> control = record.control;  // Supervise may reset the record's
  const absl::Time deadline = absl::Now() + kVmmStartTimeout;
  while (absl::Now() < deadline) {
    mutex_.Unlock();
    for (int i = 0; i < 100 && access(record.files.control_socket.c_str(), F_OK) != 0; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    v1::VmmStatus status;
    absl::Status answered = control->Status(v1::VmmStatusRequest(), &status, absl::Milliseconds(50));
    if (!answered.ok()) absl::SleepFor(absl::Milliseconds(2));
    mutex_.Lock();
    if (record.run != run || !Running(record.vm)) break;  // it ended meanwhile
    if (answered.ok()) {
      record.vm.set_accelerator(status.accelerator());
      record.started_emitted = true;
      Emit(v1::VmEvent::STARTED, name, absl::StrCat("pid ", pid, ", accelerator ", status.accelerator()));
      return grpc::Status::OK;
    }
  }
  if (record.run == run && Running(record.vm)) {
    Kill(record, "its VMM did not answer within 10 s of starting");
    return Error(grpc::StatusCode::DEADLINE_EXCEEDED, absl::StrCat("VM \"", name, "\": the VMM did not answer in time"));
  }
  WaitForRunEnd(record, run, absl::Seconds(5));
  if (record.vm.state() != v1::VM_STATE_CREATED) return grpc::Status::OK;  // it ran, and has ended already
  return Error(grpc::StatusCode::FAILED_PRECONDITION,
               absl::StrCat("VM \"", name, "\" did not start: ", record.vm.end_reason()));
}

void Daemon::Watch(Record& record, pid_t pid) {
  const std::string& name = record.vm.config().name();
  record.pid = pid;
  record.destroying = false;
  const uint64_t run = ++record.run;
  record.console = std::make_shared<ConsoleBuffer>();
  record.vm.set_state(v1::VM_STATE_RUNNING);
  record.vm.set_pid(pid);
  record.vm.set_xenstore_socket(
      ParseXenVersion(record.vm.config().xen_version()).value_or(1) != 0 ? record.files.xenstore_socket : "");
  record.control = std::make_shared<vmm::VmmControlClient>(record.files.control_socket);
  // Join the supervisors of earlier runs that have finished, then add this run's.
  std::erase_if(supervisors_, [](Supervisor& old) {
    if (!old.done->load()) return false;
    old.thread.join();
    return true;
  });
  auto done = std::make_shared<std::atomic<bool>>(false);
  supervisors_.push_back(
      Supervisor{std::thread([this, name, run, pid, files = record.files, console = record.console, done] {
                   Supervise(name, run, pid, files, console);
                   done->store(true);
                 }),
                 done});
}

void Daemon::Supervise(std::string name, uint64_t run, pid_t pid, VmFiles files,
                       std::shared_ptr<ConsoleBuffer> console) {
  ConsoleLogFollower follower(files.console_log, *console);
  absl::StatusOr<ProcessWatch> watch = ProcessWatch::Open(pid);
  while (watch.ok() && !watch->Wait(absl::Milliseconds(20))) {
    if (detaching_.load()) return;  // the daemon stops and leaves the VM running
    follower.Poll();
  }
  follower.Poll();
  bool destroyed;
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record = Find(name);
    destroyed = record != nullptr && record->run == run && record->destroying;
  }
  const RunEnd end = CollectRunEnd(pid, files, destroyed);
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record = Find(name);
  if (record == nullptr || record->run != run) return;
  record->pid = 0;
  record->vm.set_pid(0);
  record->vm.set_xenstore_socket("");
  record->control.reset();
  ApplyRunEnd(end, record->vm);
  if (record->vm.state() == v1::VM_STATE_CREATED) return;  // it never ran: StartVm reports why
  if (!record->started_emitted) Emit(v1::VmEvent::STARTED, name, absl::StrCat("pid ", pid));
  Emit(record->vm.state() == v1::VM_STATE_CRASHED ? v1::VmEvent::CRASHED : v1::VmEvent::SHUT_DOWN, name,
       record->vm.end_reason());
  ApplyEndPolicy(*record, end);
}

void Daemon::ApplyEndPolicy(Record& record, const RunEnd& end) {
  const EndPolicy policy = PolicyFor(record.vm.config(), end);
  if (policy.action != EndAction::kRestart || detaching_.load() || shutting_down_.load()) return;
  const std::string& name = record.vm.config().name();
  const std::string why = record.vm.end_reason();
  if (!record.restarts.Take(absl::Now())) {
    record.vm.set_end_reason(absl::StrCat(why, " (", policy.key, "=restart: not restarted, ", RestartBudget::kMaxRestarts,
                                          " restarts within ", absl::FormatDuration(RestartBudget::kRestartWindow), ")"));
    return;
  }
  if (grpc::Status started = Start(record); !started.ok()) {
    spdlog::warn("VM {}: {}=restart: {}", name, policy.key, started.error_message());
    return;
  }
  Emit(v1::VmEvent::RESTARTED, name, absl::StrCat(policy.key, "=restart after: ", why));
}

void Daemon::WaitForRunEnd(Record& record, uint64_t run, absl::Duration timeout) {
  auto ended = [&record, run]() { return record.run != run || record.pid == 0; };
  mutex_.AwaitWithTimeout(absl::Condition(&ended), timeout);
}

void Daemon::Kill(Record& record, const std::string& why) {
  if (record.pid == 0) return;
  const uint64_t run = record.run;
  record.destroying = true;
  kill(record.pid, SIGTERM);  // xenkvm-vmm ends its VM at once on SIGTERM
  WaitForRunEnd(record, run, kKillGrace);
  if (record.run == run && record.pid != 0) {
    kill(record.pid, SIGKILL);
    WaitForRunEnd(record, run, kKillGrace);
  }
  if (!why.empty()) record.vm.set_end_reason(why);
}

grpc::Status Daemon::AskShutdown(Record& record, const std::string& reason) {
  const std::shared_ptr<vmm::VmmControlClient> control = record.control;
  if (!control) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the VMM has no control channel");
  v1::VmmShutdownRequest request;
  request.set_reason(reason);
  v1::VmmShutdownReply reply;
  mutex_.Unlock();  // a VMM that does not answer must not stall the other VMs
  grpc::Status asked = FromAbsl(control->RequestShutdown(request, &reply, kVmmCallTimeout));
  mutex_.Lock();
  if (asked.ok()) record.guest_advertised_shutdown = reply.guest_advertises();
  return asked;
}

void Daemon::FinishShutdown(Record& record, uint64_t run, const grpc::Status& asked) {
  if (record.run != run || record.pid == 0) return;  // it powered off
  if (!asked.ok()) {
    Kill(record, absl::StrCat("shut down: the guest could not be asked (", asked.error_message(), "); destroyed"));
  } else {
    Kill(record, record.guest_advertised_shutdown
                     ? "shut down: the guest did not power off in time; destroyed"
                     : "shut down: the guest did not power off in time (it never advertised "
                       "control/feature-poweroff: no Xen PV drivers?); destroyed");
  }
}

grpc::Status Daemon::Shutdown(Record& record, const std::string& reason, absl::Duration timeout) {
  const uint64_t run = record.run;
  grpc::Status asked = AskShutdown(record, reason);
  if (asked.error_code() == grpc::StatusCode::INVALID_ARGUMENT) return asked;
  if (asked.ok()) WaitForRunEnd(record, run, timeout);
  FinishShutdown(record, run, asked);
  return grpc::Status::OK;
}

void Daemon::ShutdownAll(absl::Duration deadline) {
  shutting_down_.store(true);
  absl::MutexLock lock(&mutex_);
  // Ask every guest first, then give them the deadline together.
  struct Asked {
    std::shared_ptr<Record> record;
    uint64_t run;
    grpc::Status status;
  };
  std::vector<Asked> asked;
  for (auto& [name, record] : vms_) {
    if (Running(record->vm)) asked.push_back({record, record->run, AskShutdown(*record, "poweroff")});
  }
  const absl::Time end = absl::Now() + deadline;
  for (Asked& vm : asked) {
    if (vm.status.ok()) WaitForRunEnd(*vm.record, vm.run, std::max(end - absl::Now(), absl::ZeroDuration()));
    FinishShutdown(*vm.record, vm.run, vm.status);
  }
}


}  // namespace xenkvm::api
