#include "api/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "api/config.h"
#include "components/base/status.h"
#include "components/loader/layout.h"
#include "components/loader/kernel_image.h"
#include "components/loader/pvh_loader.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"

namespace xenkvm::api {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxSocketPath = 107;  // sun_path, less the NUL
constexpr absl::Duration kVmmStartTimeout = absl::Seconds(10);
constexpr absl::Duration kKillGrace = absl::Seconds(3);
// Every call to a VMM ends by then: a VMM that does not answer (stopped, hung) fails only its own
// VM's calls, with DEADLINE_EXCEEDED, and never while the daemon-wide lock is held.
constexpr std::chrono::seconds kVmmCallTimeout{5};
constexpr size_t kEventHistory = 1000;

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

grpc::Status Error(grpc::StatusCode code, const std::string& message) { return grpc::Status(code, message); }

grpc::Status FromAbsl(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

bool Running(const v1::Vm& vm) {
  return vm.state() == v1::VM_STATE_RUNNING || vm.state() == v1::VM_STATE_PAUSED;
}

// Checks the kernel (and the initrd's file) the way the VMM will load them, so that CreateVm
// refuses a bad one. The same reader as the VMM's: regular files only, bounded.
absl::Status CheckKernel(const v1::VmConfig& config) {
  absl::StatusOr<std::vector<uint8_t>> file = loader::ReadBootFile("kernel", config.kernel(), loader::kMaxKernelBytes);
  if (!file.ok()) return absl::InvalidArgumentError(file.status().message());
  absl::StatusOr<loader::KernelImage> image = loader::ExtractElfKernel(std::move(*file));
  if (!image.ok()) return absl::InvalidArgumentError(absl::StrCat("kernel: ", config.kernel(), ": ", image.status().message()));
  if (!config.initrd().empty()) {
    struct stat info {};
    if (stat(config.initrd().c_str(), &info) != 0 || !S_ISREG(info.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("initrd: ", config.initrd(), " is not a readable regular file"));
    }
  }
  const std::vector<uint8_t>& bytes = image->elf;
  absl::StatusOr<std::vector<memory::RegionSpec>> regions = loader::RamRegions(config.memory_mib() * loader::kMiB);
  if (!regions.ok()) return absl::InvalidArgumentError(absl::StrCat("memory_mib: ", regions.status().message()));
  absl::StatusOr<memory::GuestMemory> memory = memory::GuestMemory::Create(*regions);
  if (!memory.ok()) return memory.status();
  std::vector<loader::ReservedRange> reserved = loader::ReservedRanges();
  absl::StatusOr<loader::LoadedKernel> kernel = loader::LoadPvhKernel(bytes, *memory, reserved);
  if (!kernel.ok()) return absl::InvalidArgumentError(absl::StrCat("kernel: ", config.kernel(), ": ", kernel.status().message()));
  return absl::OkStatus();
}

// The VM's state after a run's end. xenkvm-vmm's statuses (vmm/README.md): 0 powered off, 2 could
// not build the VM, 3 powered off reporting failure, 4 reset, 5 crashed, 6 halted, 7 stopped.
void ApplyRunEnd(const RunEnd& end, v1::Vm& vm) {
  vm.set_exit_status(end.exit_status.value_or(-1));
  vm.set_end_reason(end.destroyed ? "destroyed" : end.message);
  if (end.destroyed) {
    vm.set_state(v1::VM_STATE_SHUTDOWN);
  } else if (end.signal || !end.exit_status) {
    vm.set_state(v1::VM_STATE_CRASHED);
  } else {
    switch (*end.exit_status) {
      case 0:
      case 3:
      case 4:
      case 7:
        vm.set_state(v1::VM_STATE_SHUTDOWN);
        break;
      case 2:
        vm.set_state(v1::VM_STATE_CREATED);
        break;
      default:
        vm.set_state(v1::VM_STATE_CRASHED);
    }
  }
}

}  // namespace

// ---- Daemon

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(const Options& options) {
  std::error_code error;
  fs::create_directories(fs::path(options.state_dir) / "vms", error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("state directory ", options.state_dir, ": ", error.message(), " (choose another with --state-dir)"));
  }
  chmod(options.state_dir.c_str(), 0700);
  if ((fs::path(options.state_dir) / "vms" / std::string(63, 'x') / "vmm.sock").string().size() > kMaxSocketPath) {
    return absl::InvalidArgumentError(absl::StrCat("state directory ", options.state_dir,
                                                   ": too long for the per-VM Unix sockets under it (keep it under 40 characters)"));
  }
  if (access(options.vmm_path.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("xenkvm-vmm not found or not executable at ", options.vmm_path,
                                            " (give its path with --vmm)"));
  }
  auto daemon = std::unique_ptr<Daemon>(new Daemon(options));
  XENKVM_ASSIGN_OR_RETURN(daemon->image_dirs_, ImageDirs::Create(options.image_dirs));
  XENKVM_RETURN_IF_ERROR(daemon->LockStateDir());
  XENKVM_RETURN_IF_ERROR(daemon->LoadState());
  return daemon;
}

// Every file the VM's config names lies under --image-dir (when given).
absl::Status Daemon::CheckConfined(const v1::VmConfig& config) const {
  XENKVM_RETURN_IF_ERROR(image_dirs_.Check("kernel", config.kernel()));
  if (!config.initrd().empty()) XENKVM_RETURN_IF_ERROR(image_dirs_.Check("initrd", config.initrd()));
  for (const v1::DiskConfig& disk : config.disks()) XENKVM_RETURN_IF_ERROR(image_dirs_.Check("disk.path", disk.path()));
  return absl::OkStatus();
}

// flock on STATE_DIR/xenkvmd.lock, with the holder's pid in it: two daemons on one directory
// would start two VMMs for one VM and delete each other's sockets.
absl::Status Daemon::LockStateDir() {
  const std::string path = (fs::path(options_.state_dir) / "xenkvmd.lock").string();
  lock_fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char holder[32] = {};
    (void)!pread(lock_fd_, holder, sizeof holder - 1, 0);
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", options_.state_dir, " is in use by another xenkvmd (pid ",
        absl::StripAsciiWhitespace(holder), "): stop that one first, or give this one another --state-dir"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(lock_fd_, 0) != 0 || pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    spdlog::warn("cannot record the daemon's pid in {}: {}", path, std::strerror(errno));
  }
  return absl::OkStatus();
}

absl::Status Daemon::LoadState() {
  absl::MutexLock lock(&mutex_);
  for (const fs::directory_entry& entry : fs::directory_iterator(fs::path(options_.state_dir) / "vms")) {
    std::ifstream file(entry.path() / "config.json");
    if (!file) continue;
    std::stringstream text;
    text << file.rdbuf();
    absl::StatusOr<v1::VmConfig> config = ParseConfigText(text.str(), (entry.path() / "config.json").string());
    if (!config.ok()) {
      spdlog::warn("skipping {}: {}", entry.path().string(), std::string(config.status().message()));
      continue;
    }
    auto record = std::make_shared<Record>(entry.path().string());
    *record->vm.mutable_config() = *config;
    record->vm.set_state(v1::VM_STATE_CREATED);
    record->vm.set_exit_status(-1);
    Recover(*record);
    vms_[config->name()] = std::move(record);
  }
  return absl::OkStatus();
}

void Daemon::Recover(Record& record) {
  const std::string& name = record.vm.config().name();
  if (std::optional<pid_t> pid = FindRunningVmm(record.files)) {
    Watch(record, *pid);
    // Paused or running, and on which accelerator: the VMM knows.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
    v1::VmmStatus status;
    if (record.control->Status(&context, v1::VmmStatusRequest(), &status).ok()) {
      record.vm.set_accelerator(status.accelerator());
      if (status.paused()) record.vm.set_state(v1::VM_STATE_PAUSED);
    }
    record.started_emitted = true;
    Emit(v1::VmEvent::STARTED, name, absl::StrCat("pid ", *pid, ", running since before this daemon started: taken over"));
    return;
  }
  std::optional<RunEnd> end;
  if (access(record.files.pid.c_str(), F_OK) == 0) {
    end = CollectRunEnd(0, record.files, false);  // it ended while no daemon watched it
  } else {
    end = ReadRunEnd(record.files);
  }
  if (!end) return;
  ApplyRunEnd(*end, record.vm);
  if (record.vm.state() == v1::VM_STATE_CRASHED) Emit(v1::VmEvent::CRASHED, name, record.vm.end_reason());
}

Daemon::~Daemon() {
  if (options_.keep_vms) {
    detaching_.store(true);  // supervisors leave; a restarted daemon takes the VMMs over
  } else {
    ShutdownAll(absl::Seconds(5));
  }
  std::vector<Supervisor> supervisors;
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
    supervisors.swap(supervisors_);
  }
  for (Supervisor& supervisor : supervisors) supervisor.thread.join();
  if (lock_fd_ >= 0) close(lock_fd_);
}

size_t Daemon::RunningVms() {
  absl::MutexLock lock(&mutex_);
  return std::count_if(vms_.begin(), vms_.end(), [](const auto& entry) { return Running(entry.second->vm); });
}

std::shared_ptr<Daemon::Record> Daemon::Find(const std::string& name) {
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second;
}

grpc::Status Daemon::Lookup(const std::string& name, std::shared_ptr<Record>* record) {
  *record = Find(name);
  if (*record == nullptr) return Error(grpc::StatusCode::NOT_FOUND, absl::StrCat("no VM named \"", name, "\""));
  return grpc::Status::OK;
}

void Daemon::Emit(v1::VmEvent::Kind kind, const std::string& name, const std::string& detail) {
  v1::VmEvent event;
  event.set_kind(kind);
  event.set_name(name);
  event.set_detail(detail);
  event.set_unix_ms(NowMs());
  event.set_sequence(events_emitted_ + 1);
  events_.push_back(event);
  if (events_.size() > kEventHistory) events_.pop_front();
  ++events_emitted_;
  spdlog::info("VM {}: {} {}", name, v1::VmEvent::Kind_Name(kind), detail);
}

grpc::Status Daemon::CreateVm(grpc::ServerContext*, const v1::CreateVmRequest* request, v1::Vm* reply) {
  if (absl::Status valid = ValidateVmConfig(request->config()); !valid.ok()) return FromAbsl(valid);
  v1::VmConfig config = WithDefaults(request->config());
  if (absl::Status confined = CheckConfined(config); !confined.ok()) return FromAbsl(confined);
  if (absl::Status kernel = CheckKernel(config); !kernel.ok()) return FromAbsl(kernel);
  absl::MutexLock lock(&mutex_);
  if (std::shared_ptr<Record> existing = Find(config.name())) {
    if (existing->vm.config().SerializeAsString() != config.SerializeAsString()) {
      return Error(grpc::StatusCode::ALREADY_EXISTS,
                   absl::StrCat("a VM named \"", config.name(), "\" exists with another config (delete it first)"));
    }
    // The same definition again: as xl create, a VM that is not running is started.
    grpc::Status started = request->start() && !Running(existing->vm) ? Start(*existing) : grpc::Status::OK;
    *reply = existing->vm;
    return started;
  }
  if (vms_.size() >= options_.max_vms) {
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED,
                 absl::StrFormat("this daemon holds at most %u VMs (--max-vms); delete one first", options_.max_vms));
  }
  auto record = std::make_shared<Record>((fs::path(options_.state_dir) / "vms" / config.name()).string());
  std::error_code error;
  fs::create_directories(record->files.dir, error);
  if (error) {
    return Error(grpc::StatusCode::INTERNAL, absl::StrCat("cannot create ", record->files.dir, ": ", error.message()));
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(config, &json, print);
  if (absl::Status saved = WriteFileAtomically(record->files.config, json); !saved.ok()) {
    fs::remove_all(record->files.dir, error);  // no half-defined VM comes back after a restart
    return Error(grpc::StatusCode::INTERNAL, absl::StrCat("the VM was not created: ", saved.message()));
  }
  *record->vm.mutable_config() = config;
  record->vm.set_state(v1::VM_STATE_CREATED);
  record->vm.set_exit_status(-1);
  record->vm.set_created_unix_ms(NowMs());
  vms_[config.name()] = record;
  Emit(v1::VmEvent::CREATED, config.name(), "");
  if (request->start()) {
    if (grpc::Status started = Start(*record); !started.ok()) return started;
  }
  *reply = record->vm;
  return grpc::Status::OK;
}

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
  args.insert(args.end(), {"--status-file", record.files.end});
  absl::StatusOr<pid_t> spawned = SpawnVmm(args, record.files);
  if (!spawned.ok()) return FromAbsl(spawned.status());
  const pid_t pid = *spawned;
  record.vm.set_end_reason("");
  record.vm.set_exit_status(-1);
  record.vm.set_started_unix_ms(NowMs());
  record.started_emitted = false;
  Watch(record, pid);
  const uint64_t run = record.run;

  // Wait (without the lock) until the VMM answers on its control socket, or ends. Connecting
  // before the socket exists costs a reconnect backoff, so first wait for the file.
  const std::shared_ptr<v1::VmmControl::Stub> control = record.control;  // Supervise may reset the record's
  const absl::Time deadline = absl::Now() + kVmmStartTimeout;
  while (absl::Now() < deadline) {
    mutex_.Unlock();
    for (int i = 0; i < 100 && access(record.files.control_socket.c_str(), F_OK) != 0; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
    context.set_wait_for_ready(true);
    v1::VmmStatus status;
    grpc::Status answered = control->Status(&context, v1::VmmStatusRequest(), &status);
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
  // The VMM creates its socket a few milliseconds from now: retry connecting quickly, not with
  // gRPC's default one-second backoff.
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 5);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
  record.control = v1::VmmControl::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("unix:", record.files.control_socket), grpc::InsecureChannelCredentials(), channel_args));
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
  const std::shared_ptr<v1::VmmControl::Stub> control = record.control;
  if (!control) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the VMM has no control channel");
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
  v1::VmmShutdownRequest request;
  request.set_reason(reason);
  v1::VmmShutdownReply reply;
  mutex_.Unlock();  // a VMM that does not answer must not stall the other VMs
  grpc::Status asked = control->RequestShutdown(&context, request, &reply);
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

grpc::Status Daemon::StartVm(grpc::ServerContext*, const v1::VmRef* request, v1::Vm* reply) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
  grpc::Status started = Start(*record);
  *reply = record->vm;
  return started;
}

grpc::Status Daemon::SetPaused(const std::string& name, bool pause, v1::Vm* reply) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(name, &record); !found.ok()) return found;
  const v1::VmState from = pause ? v1::VM_STATE_RUNNING : v1::VM_STATE_PAUSED;
  if (record->vm.state() == (pause ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING)) {
    *reply = record->vm;  // already so: as xl, pausing a paused VM is no error
    return grpc::Status::OK;
  }
  if (record->vm.state() != from || !record->control) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat("VM \"", name, "\" is ", VmStateName(record->vm.state()),
                                                                     pause ? ", not running" : ", not paused"));
  }
  const std::shared_ptr<v1::VmmControl::Stub> control = record->control;
  const uint64_t run = record->run;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
  v1::VmmReply ignored;
  mutex_.Unlock();  // a VMM that does not answer must not stall the other VMs
  grpc::Status done = pause ? control->Pause(&context, v1::VmmPauseRequest(), &ignored)
                            : control->Resume(&context, v1::VmmResumeRequest(), &ignored);
  mutex_.Lock();
  if (record->run != run || record->vm.state() != from) {
    return Error(grpc::StatusCode::ABORTED, absl::StrCat("VM \"", name, "\" became ", VmStateName(record->vm.state()),
                                                         " meanwhile"));
  }
  if (!done.ok()) {
    return Error(done.error_code(),
                 absl::StrCat("the VMM did not ", pause ? "pause" : "resume", ": ", done.error_message()));
  }
  record->vm.set_state(pause ? v1::VM_STATE_PAUSED : v1::VM_STATE_RUNNING);
  Emit(pause ? v1::VmEvent::PAUSED : v1::VmEvent::RESUMED, name, "");
  *reply = record->vm;
  return grpc::Status::OK;
}

grpc::Status Daemon::PauseVm(grpc::ServerContext*, const v1::VmRef* request, v1::Vm* reply) {
  return SetPaused(request->name(), true, reply);
}

grpc::Status Daemon::ResumeVm(grpc::ServerContext*, const v1::VmRef* request, v1::Vm* reply) {
  return SetPaused(request->name(), false, reply);
}

grpc::Status Daemon::ShutdownVm(grpc::ServerContext*, const v1::ShutdownVmRequest* request, v1::Vm* reply) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
  if (!Running(record->vm)) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("VM \"", request->name(), "\" is ", VmStateName(record->vm.state()), ", not running"));
  }
  grpc::Status done = Shutdown(*record, request->reason().empty() ? "poweroff" : request->reason(),
                               absl::Seconds(request->timeout_seconds() == 0 ? 30 : request->timeout_seconds()));
  if (!done.ok()) return Error(done.error_code(), done.error_message());
  *reply = record->vm;
  return grpc::Status::OK;
}

grpc::Status Daemon::DestroyVm(grpc::ServerContext*, const v1::VmRef* request, v1::Vm* reply) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
  if (!Running(record->vm)) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("VM \"", request->name(), "\" is ", VmStateName(record->vm.state()), ", not running"));
  }
  Kill(*record, "destroyed");
  *reply = record->vm;
  return grpc::Status::OK;
}

grpc::Status Daemon::DeleteVm(grpc::ServerContext*, const v1::VmRef* request, v1::DeleteVmResponse*) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
  if (Running(record->vm)) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("VM \"", request->name(), "\" is ", VmStateName(record->vm.state()), ": destroy it first"));
  }
  std::error_code error;
  fs::remove_all(record->files.dir, error);
  vms_.erase(request->name());
  Emit(v1::VmEvent::DELETED, request->name(), "");
  return grpc::Status::OK;
}

grpc::Status Daemon::GetVm(grpc::ServerContext*, const v1::VmRef* request, v1::Vm* reply) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
  *reply = record->vm;
  return grpc::Status::OK;
}

grpc::Status Daemon::ListVms(grpc::ServerContext*, const v1::ListVmsRequest*, v1::ListVmsResponse* reply) {
  absl::MutexLock lock(&mutex_);
  for (const auto& [name, record] : vms_) *reply->add_vms() = record->vm;
  return grpc::Status::OK;
}

// The VMM of a running VM, for a call that may take a while: the stub is shared, the lock released.
grpc::Status Daemon::RunningVmm(const std::string& name, std::shared_ptr<v1::VmmControl::Stub>* control) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(name, &record); !found.ok()) return found;
  if (!Running(record->vm) || !record->control) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("VM \"", name, "\" is ", VmStateName(record->vm.state()),
                              ", not running (disks in its config are attached when it starts)"));
  }
  *control = record->control;
  return grpc::Status::OK;
}

grpc::Status Daemon::AttachDisk(grpc::ServerContext*, const v1::AttachDiskRequest* request, v1::Device* reply) {
  std::shared_ptr<v1::VmmControl::Stub> control;
  if (grpc::Status running = RunningVmm(request->name(), &control); !running.ok()) return running;
  if (request->disk().path().empty() || request->disk().path()[0] != '/') {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("disk.path: \"", request->disk().path(), "\" must be an absolute path"));
  }
  if (absl::Status confined = image_dirs_.Check("disk.path", request->disk().path()); !confined.ok()) {
    return FromAbsl(confined);
  }
  v1::VmmAttachDiskRequest attach;
  *attach.mutable_disk() = request->disk();
  if (attach.disk().vdev().empty()) {
    // The next free xvdX, as xl does.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
    v1::ListDevicesResponse devices;
    if (grpc::Status listed = control->Devices(&context, v1::VmmDevicesRequest(), &devices); !listed.ok()) {
      return Error(listed.error_code(), listed.error_message());
    }
    std::set<std::string> used;
    for (const v1::Device& device : devices.devices()) used.insert(device.id());
    for (char letter = 'a'; letter <= 'z' && attach.disk().vdev().empty(); ++letter) {
      if (!used.contains(std::string("xvd") + letter)) attach.mutable_disk()->set_vdev(std::string("xvd") + letter);
    }
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status attached = control->AttachDisk(&context, attach, reply);
  if (!attached.ok()) {
    return Error(attached.error_code(), absl::StrCat("VM \"", request->name(), "\": ", attached.error_message()));
  }
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::DISK_ATTACHED, request->name(), absl::StrCat(reply->id(), " ", reply->disk().path()));
  return grpc::Status::OK;
}

grpc::Status Daemon::DetachDisk(grpc::ServerContext*, const v1::DetachDiskRequest* request, v1::DetachDiskResponse*) {
  std::shared_ptr<v1::VmmControl::Stub> control;
  if (grpc::Status running = RunningVmm(request->name(), &control); !running.ok()) return running;
  v1::VmmDetachDiskRequest detach;
  detach.set_vdev(request->vdev());
  detach.set_force(request->force());
  detach.set_timeout_seconds(request->timeout_seconds() ? request->timeout_seconds() : 10);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(detach.timeout_seconds() + 10));
  v1::VmmDetachDiskReply reply;
  grpc::Status detached = control->DetachDisk(&context, detach, &reply);
  if (!detached.ok()) {
    return Error(detached.error_code(), absl::StrCat("VM \"", request->name(), "\": ", detached.error_message()));
  }
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::DISK_DETACHED, request->name(),
       absl::StrCat(request->vdev(), reply.forced() ? " (forced: the guest did not release it)" : " (released by the guest)"));
  return grpc::Status::OK;
}

grpc::Status Daemon::ListDevices(grpc::ServerContext*, const v1::VmRef* request, v1::ListDevicesResponse* reply) {
  std::shared_ptr<v1::VmmControl::Stub> control;
  v1::VmConfig config;
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record;
    if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
    config = record->vm.config();
    if (Running(record->vm)) control = record->control;
  }
  // The emulated devices every VM has, and with the Xen interface its PV console (served by the
  // VMM from boot, as xenconsoled does).
  auto add = [reply](const char* kind, const char* id) {
    v1::Device* device = reply->add_devices();
    device->set_kind(kind);
    device->set_id(id);
  };
  add("serial", "com1");
  add("debug-port", "0xe9");
  if (ParseXenVersion(config.xen_version()).value_or(1) != 0) add("xen-console", "0");
  // Disks: as the running VMM has them (with their XenBus states), else as configured.
  if (control) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
    v1::ListDevicesResponse disks;
    if (grpc::Status listed = control->Devices(&context, v1::VmmDevicesRequest(), &disks); !listed.ok()) {
      return Error(listed.error_code(), absl::StrCat("VM \"", request->name(), "\": ", listed.error_message()));
    }
    for (const v1::Device& disk : disks.devices()) *reply->add_devices() = disk;
  } else {
    for (const v1::DiskConfig& disk : config.disks()) {
      v1::Device* device = reply->add_devices();
      device->set_kind("xen-disk");
      device->set_id(disk.vdev());
      *device->mutable_disk() = disk;
    }
  }
  return grpc::Status::OK;
}

grpc::Status Daemon::ListEventChannels(grpc::ServerContext*, const v1::VmRef* request, v1::EventChannelList* reply) {
  const std::string& name = request->name();
  std::shared_ptr<v1::VmmControl::Stub> control;
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record;
    if (grpc::Status found = Lookup(name, &record); !found.ok()) return found;
    if (!Running(record->vm) || !record->control) {
      return Error(grpc::StatusCode::FAILED_PRECONDITION,
                   absl::StrCat("VM \"", name, "\" is ", VmStateName(record->vm.state()), ", not running"));
    }
    control = record->control;
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kVmmCallTimeout);
  grpc::Status listed = control->EventChannels(&context, v1::VmmEventChannelsRequest(), reply);
  if (!listed.ok()) return Error(listed.error_code(), absl::StrCat("VM \"", name, "\": ", listed.error_message()));
  return grpc::Status::OK;
}

grpc::Status Daemon::StreamConsole(grpc::ServerContext* context, const v1::StreamConsoleRequest* request,
                                   grpc::ServerWriter<v1::ConsoleChunk>* writer) {
  std::shared_ptr<ConsoleBuffer> console;
  uint64_t run = 0;
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record;
    if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
    console = record->console;
    run = record->run;
  }
  uint64_t offset = request->replay() ? 0 : console->total();
  while (!context->IsCancelled()) {
    std::string data = console->ReadFrom(offset);
    if (!data.empty()) {
      v1::ConsoleChunk chunk;
      chunk.set_data(data);
      if (!writer->Write(chunk)) break;
    }
    if (request->no_follow()) break;
    {
      absl::MutexLock lock(&mutex_);
      std::shared_ptr<Record> record = Find(request->name());
      if (record == nullptr || record->run != run || !Running(record->vm)) {
        // The run ended: send what is left, then end the stream.
        std::string rest = console->ReadFrom(offset);
        if (!rest.empty()) {
          v1::ConsoleChunk chunk;
          chunk.set_data(rest);
          writer->Write(chunk);
        }
        break;
      }
    }
    console->WaitBeyond(offset, absl::Milliseconds(200));
  }
  return grpc::Status::OK;
}

grpc::Status Daemon::WatchEvents(grpc::ServerContext* context, const v1::WatchEventsRequest* request,
                                 grpc::ServerWriter<v1::VmEvent>* writer) {
  uint64_t seen;
  {
    absl::MutexLock lock(&mutex_);
    seen = events_emitted_;
    if (request->has_since()) {
      if (request->since() > events_emitted_) {
        return Error(grpc::StatusCode::OUT_OF_RANGE,
                     absl::StrCat("since ", request->since(), ": this xenkvmd has emitted ", events_emitted_,
                                  " events (it restarted?): list the VMs again, then watch without since"));
      }
      seen = request->since();  // the kept ones after it are sent first (older ones are gone)
    }
  }
  while (!context->IsCancelled()) {
    std::vector<v1::VmEvent> fresh;
    {
      absl::MutexLock lock(&mutex_);
      auto more = [this, &seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return events_emitted_ > seen || stopping_; };
      mutex_.AwaitWithTimeout(absl::Condition(&more), absl::Milliseconds(200));
      if (stopping_) break;
      const uint64_t first_kept = events_emitted_ - events_.size();
      for (uint64_t i = std::max(seen, first_kept); i < events_emitted_; ++i) fresh.push_back(events_[i - first_kept]);
      seen = events_emitted_;
    }
    for (const v1::VmEvent& event : fresh) {
      if (!request->name().empty() && event.name() != request->name()) continue;
      if (!writer->Write(event)) return grpc::Status::OK;
    }
  }
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
