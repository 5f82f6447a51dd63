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
#include "api/daemon_internal.h"
#include "components/base/user.h"
#include "components/base/status.h"
#include "components/loader/layout.h"
#include "components/loader/kernel_image.h"
#include "components/loader/pvh_loader.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"

namespace xenkvm::api {
namespace {

using namespace daemon_internal;  // NOLINT: the daemon's own helpers

namespace fs = std::filesystem;

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
  if (!options.vmm_user.empty()) {
    absl::StatusOr<base::UserIds> user = base::ResolveUser(options.vmm_user);
    if (!user.ok()) return absl::InvalidArgumentError(absl::StrCat("--vmm-user: ", user.status().message()));
    if (user->uid == 0) return absl::InvalidArgumentError(absl::StrCat("--vmm-user ", options.vmm_user, ": that is root"));
  }
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
    v1::VmmStatus status;
    if (record.control->Status(v1::VmmStatusRequest(), &status, kVmmCallTimeout).ok()) {
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
  const std::shared_ptr<vmm::VmmControlClient> control = record->control;
  const uint64_t run = record->run;
  v1::VmmReply ignored;
  mutex_.Unlock();  // a VMM that does not answer must not stall the other VMs
  absl::Status done = pause ? control->Pause(v1::VmmPauseRequest(), &ignored, kVmmCallTimeout)
                            : control->Resume(v1::VmmResumeRequest(), &ignored, kVmmCallTimeout);
  mutex_.Lock();
  if (record->run != run || record->vm.state() != from) {
    return Error(grpc::StatusCode::ABORTED, absl::StrCat("VM \"", name, "\" became ", VmStateName(record->vm.state()),
                                                         " meanwhile"));
  }
  if (!done.ok()) {
    return Error(static_cast<grpc::StatusCode>(done.code()),
                 absl::StrCat("the VMM did not ", pause ? "pause" : "resume", ": ", done.message()));
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
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record;
    if (grpc::Status found = Lookup(request->name(), &record); !found.ok()) return found;
    *reply = record->vm;
  }
  AddUsage(*reply);
  return grpc::Status::OK;
}

grpc::Status Daemon::ListVms(grpc::ServerContext*, const v1::ListVmsRequest*, v1::ListVmsResponse* reply) {
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [name, record] : vms_) *reply->add_vms() = record->vm;
  }
  for (v1::Vm& vm : *reply->mutable_vms()) AddUsage(vm);
  return grpc::Status::OK;
}

void Daemon::AddUsage(v1::Vm& vm) {
  if (vm.pid() == 0 || !Running(vm)) return;
  if (std::optional<ProcessUsage> usage = ReadProcessUsage(static_cast<pid_t>(vm.pid()))) {
    vm.set_cpu_seconds(usage->cpu_seconds);
    vm.set_rss_bytes(usage->rss_bytes);
    for (double seconds : usage->vcpu_seconds) vm.add_vcpu_seconds(seconds);
  }
}

}  // namespace xenkvm::api
