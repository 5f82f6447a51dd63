// xenkvmd: calls that reach a running VM's VMM (disks, devices, event channels), its console and the event stream.
#include "api/daemon.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <thread>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "api/config.h"
#include "components/base/fd_handover.h"
#include "components/base/status.h"
#include "components/block/image.h"
#include "components/net/mac_address.h"
#include "components/net/tap.h"
#include "components/xenbus/vdev.h"
#include "components/xenbus/vif_spec.h"
#include "api/daemon_internal.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"

namespace xenkvm::api {

using namespace daemon_internal;  // NOLINT: the daemon's own helpers

// The VMM of a running VM, for a call that may take a while: the client is shared, the lock released.
grpc::Status Daemon::RunningVmm(const std::string& name, std::shared_ptr<vmm::VmmControlClient>* control,
                                std::string* handover_socket) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<Record> record;
  if (grpc::Status found = Lookup(name, &record); !found.ok()) return found;
  if (!Running(record->vm) || !record->control) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("VM \"", name, "\" is ", VmStateName(record->vm.state()), ", not running"));
  }
  *control = record->control;
  if (handover_socket != nullptr) *handover_socket = record->files.handover_socket;
  return grpc::Status::OK;
}

namespace {

// The daemon opens what a hot-plug needs itself -- as root, with the image's checks and lock, or
// the tap created, up and bridged -- and hands the open file to the VMM, which may be unprivileged
// or confined to an empty root (vmm/jail.h). A VMM started without a handover socket (by an older
// xenkvmd, then re-adopted) opens the path itself as before: the token stays empty.
absl::Status HandOver(const std::string& socket, const absl::StatusOr<base::Fd>& opened, std::string* token) {
  if (access(socket.c_str(), F_OK) != 0) return absl::OkStatus();
  if (!opened.ok()) return opened.status();
  *token = base::NewHandoverToken();
  return base::HandOverFd(socket, *token, opened->get());
}

// The vdev checked (a name the guest understands, not attached already) before the image is
// opened for it, or the next free xvdX as xl picks it. The VMM checks again, on its backend loop:
// of concurrent attaches of one vdev exactly one wins there.
absl::Status ChooseFreeVdev(const vmm::VmmControlClient& control, v1::DiskConfig& disk) {
  v1::ListDevicesResponse devices;
  XENKVM_RETURN_IF_ERROR(control.Devices(v1::VmmDevicesRequest(), &devices, kVmmCallTimeout));
  std::map<uint32_t, const v1::Device*> used;
  for (const v1::Device& device : devices.devices()) {
    if (device.kind() != "xen-disk") continue;
    if (absl::StatusOr<uint32_t> devid = xenbus::ParseVirtualDevice(device.id()); devid.ok()) used[*devid] = &device;
  }
  if (disk.vdev().empty()) {
    for (char letter = 'a'; letter <= 'z' && disk.vdev().empty(); ++letter) {
      const std::string name = std::string("xvd") + letter;
      if (!used.contains(*xenbus::ParseVirtualDevice(name))) disk.set_vdev(name);
    }
    if (disk.vdev().empty()) return absl::ResourceExhaustedError("xvda to xvdz are all attached");
    return absl::OkStatus();
  }
  XENKVM_ASSIGN_OR_RETURN(uint32_t devid, xenbus::ParseVirtualDevice(disk.vdev()));
  if (auto holder = used.find(devid); holder != used.end()) {
    return absl::AlreadyExistsError(absl::StrCat("xen-disk ", disk.vdev(), ": device ", devid, " is attached already (",
                                                 holder->second->id(), ", ", holder->second->disk().path(),
                                                 "): detach it first"));
  }
  return absl::OkStatus();
}

// The tap up and bridged, a descriptor for each of its queues (one when it is single-queue).
absl::StatusOr<std::vector<base::Fd>> OpenTapQueues(const v1::NetworkConfig& network) {
  XENKVM_ASSIGN_OR_RETURN(std::vector<net::Tap> queues, net::Tap::OpenQueues(network.tap(), xenbus::kMaxVifQueues));
  XENKVM_RETURN_IF_ERROR(queues.front().BringUp(network.mtu()));
  if (!network.bridge().empty()) XENKVM_RETURN_IF_ERROR(queues.front().AttachToBridge(network.bridge()));
  std::vector<base::Fd> fds;
  for (const net::Tap& queue : queues) fds.emplace_back(dup(queue.fd()));
  return fds;
}

// The tap's queues handed over: the first under the request's token, the rest under their own.
absl::Status HandOverTap(const std::string& socket, const v1::NetworkConfig& network,
                         v1::VmmAttachNetworkRequest& attach) {
  if (access(socket.c_str(), F_OK) != 0) return absl::OkStatus();  // an older VMM opens it itself
  XENKVM_ASSIGN_OR_RETURN(std::vector<base::Fd> queues, OpenTapQueues(network));
  for (size_t queue = 0; queue < queues.size(); ++queue) {
    std::string* token = queue == 0 ? attach.mutable_handover_token() : attach.add_queue_handover_tokens();
    XENKVM_RETURN_IF_ERROR(HandOver(socket, std::move(queues[queue]), token));
  }
  return absl::OkStatus();
}

}  // namespace

template <typename Request, typename Reply>
grpc::Status Daemon::CallRunningVmm(const std::string& name,
                                    absl::Status (vmm::VmmControlClient::*call)(const Request&, Reply*, absl::Duration) const,
                                    const Request& request, Reply* reply) {
  std::shared_ptr<vmm::VmmControlClient> control;
  if (grpc::Status running = RunningVmm(name, &control); !running.ok()) return running;
  if (absl::Status called = ((*control).*call)(request, reply, kVmmCallTimeout); !called.ok()) return VmError(name, called);
  return grpc::Status::OK;
}

grpc::Status Daemon::AttachDisk(grpc::ServerContext*, const v1::AttachDiskRequest* request, v1::Device* reply) {
  std::shared_ptr<vmm::VmmControlClient> control;
  std::string handover_socket;
  if (grpc::Status running = RunningVmm(request->name(), &control, &handover_socket); !running.ok()) return running;
  if (absl::Status valid = ValidateDisk(request->disk(), "disk"); !valid.ok()) return FromAbsl(valid);
  if (absl::Status confined = image_dirs_.Check("disk.path", request->disk().path()); !confined.ok()) {
    return FromAbsl(confined);
  }
  v1::VmmAttachDiskRequest attach;
  *attach.mutable_disk() = request->disk();
  if (absl::Status chosen = ChooseFreeVdev(*control, *attach.mutable_disk()); !chosen.ok()) {
    return VmError(request->name(), chosen);
  }
  if (absl::Status handed = HandOver(handover_socket, block::Image::OpenFile(attach.disk().path(), attach.disk().read_only()),
                                     attach.mutable_handover_token());
      !handed.ok()) {
    return Error(FromAbsl(handed).error_code(),
                 absl::StrCat("VM \"", request->name(), "\": xen-disk ", attach.disk().vdev(), ": ", handed.message()));
  }
  if (absl::Status attached = control->AttachDisk(attach, reply, absl::Seconds(10)); !attached.ok()) {
    return VmError(request->name(), attached);
  }
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::DISK_ATTACHED, request->name(), absl::StrCat(reply->id(), " ", reply->disk().path()));
  return grpc::Status::OK;
}

grpc::Status Daemon::DetachDisk(grpc::ServerContext*, const v1::DetachDiskRequest* request, v1::DetachDiskResponse*) {
  std::shared_ptr<vmm::VmmControlClient> control;
  if (grpc::Status running = RunningVmm(request->name(), &control); !running.ok()) return running;
  v1::VmmDetachDiskRequest detach;
  detach.set_vdev(request->vdev());
  detach.set_force(request->force());
  detach.set_timeout_seconds(request->timeout_seconds() ? request->timeout_seconds() : 10);
  v1::VmmDetachDiskReply reply;
  if (absl::Status detached = control->DetachDisk(detach, &reply, absl::Seconds(detach.timeout_seconds() + 10));
      !detached.ok()) {
    return VmError(request->name(), detached);
  }
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::DISK_DETACHED, request->name(),
       absl::StrCat(request->vdev(), reply.forced() ? " (forced: the guest did not release it)" : " (released by the guest)"));
  return grpc::Status::OK;
}

grpc::Status Daemon::AttachNetwork(grpc::ServerContext*, const v1::AttachNetworkRequest* request, v1::Device* reply) {
  // The same checks as a configured vif's; a MAC chosen here if none is given.
  if (absl::Status valid = ValidateNetwork(request->network(), "network"); !valid.ok()) return FromAbsl(valid);
  v1::VmmAttachNetworkRequest attach;
  *attach.mutable_network() = request->network();
  if (attach.network().mac().empty()) attach.mutable_network()->set_mac(net::FormatMac(net::GenerateXenMac()));
  std::shared_ptr<vmm::VmmControlClient> control;
  std::string handover_socket;
  if (grpc::Status running = RunningVmm(request->name(), &control, &handover_socket); !running.ok()) return running;
  if (absl::Status handed = HandOverTap(handover_socket, attach.network(), attach); !handed.ok()) {
    return Error(FromAbsl(handed).error_code(), absl::StrCat("VM \"", request->name(), "\": xen-net: ", handed.message()));
  }
  grpc::Status attached = CallRunningVmm(request->name(), &vmm::VmmControlClient::AttachNetwork, attach, reply);
  if (!attached.ok()) return attached;
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::NETWORK_ATTACHED, request->name(),
       absl::StrCat("vif", reply->id(), " ", reply->network().mac(), " on tap ", reply->network().tap()));
  return grpc::Status::OK;
}

grpc::Status Daemon::DetachNetwork(grpc::ServerContext*, const v1::DetachNetworkRequest* request,
                                   v1::DetachNetworkResponse* response) {
  std::shared_ptr<vmm::VmmControlClient> control;
  if (grpc::Status running = RunningVmm(request->name(), &control); !running.ok()) return running;
  // xl network-detach takes the index or the MAC.
  v1::VmmDetachNetworkRequest detach;
  uint32_t devid = 0;
  if (!absl::SimpleAtoi(request->device(), &devid)) {
    v1::ListDevicesResponse devices;
    if (absl::Status listed = control->Devices(v1::VmmDevicesRequest(), &devices, kVmmCallTimeout); !listed.ok()) {
      return VmError(request->name(), listed);
    }
    auto vif = std::find_if(devices.devices().begin(), devices.devices().end(), [&](const v1::Device& device) {
      return device.kind() == "xen-net" && absl::EqualsIgnoreCase(device.network().mac(), request->device());
    });
    if (vif == devices.devices().end() || !absl::SimpleAtoi(vif->id(), &devid)) {
      return Error(grpc::StatusCode::NOT_FOUND, absl::StrCat("VM \"", request->name(), "\" has no vif \"",
                                                             request->device(), "\" (give its index or MAC)"));
    }
  }
  detach.set_devid(devid);
  detach.set_force(request->force());
  detach.set_timeout_seconds(request->timeout_seconds() ? request->timeout_seconds() : 10);
  v1::VmmDetachDiskReply reply;
  if (absl::Status detached = control->DetachNetwork(detach, &reply, absl::Seconds(detach.timeout_seconds() + 10));
      !detached.ok()) {
    return VmError(request->name(), detached);
  }
  response->set_forced(reply.forced());
  absl::MutexLock lock(&mutex_);
  Emit(v1::VmEvent::NETWORK_DETACHED, request->name(),
       absl::StrCat("vif", devid, reply.forced() ? " (forced: the guest did not release it)" : " (released by the guest)"));
  return grpc::Status::OK;
}

grpc::Status Daemon::ListDevices(grpc::ServerContext*, const v1::VmRef* request, v1::ListDevicesResponse* reply) {
  std::shared_ptr<vmm::VmmControlClient> control;
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
    v1::ListDevicesResponse disks;
    if (absl::Status listed = control->Devices(v1::VmmDevicesRequest(), &disks, kVmmCallTimeout); !listed.ok()) {
      return VmError(request->name(), listed);
    }
    for (const v1::Device& disk : disks.devices()) *reply->add_devices() = disk;
  } else {
    for (const v1::DiskConfig& disk : config.disks()) {
      v1::Device* device = reply->add_devices();
      device->set_kind("xen-disk");
      device->set_id(disk.vdev());
      *device->mutable_disk() = disk;
    }
    for (int i = 0; i < config.networks_size(); ++i) {
      v1::Device* device = reply->add_devices();
      device->set_kind("xen-net");
      device->set_id(absl::StrCat(i));
      *device->mutable_network() = config.networks(i);
    }
  }
  return grpc::Status::OK;
}

grpc::Status Daemon::ListEventChannels(grpc::ServerContext*, const v1::VmRef* request, v1::EventChannelList* reply) {
  return CallRunningVmm(request->name(), &vmm::VmmControlClient::EventChannels, v1::VmmEventChannelsRequest(), reply);
}

grpc::Status Daemon::SetMemoryTarget(grpc::ServerContext*, const v1::SetMemoryTargetRequest* request,
                                     v1::MemoryStatus* reply) {
  v1::VmmMemoryTargetRequest target;
  target.set_target_kib(request->target_kib());
  grpc::Status set = CallRunningVmm(request->name(), &vmm::VmmControlClient::SetMemoryTarget, target, reply);
  if (set.ok()) Emit(v1::VmEvent::MEMORY_TARGET, request->name(), absl::StrCat(request->target_kib(), " KiB"));
  return set;
}

grpc::Status Daemon::GetMemory(grpc::ServerContext*, const v1::VmRef* request, v1::MemoryStatus* reply) {
  return CallRunningVmm(request->name(), &vmm::VmmControlClient::Memory, v1::VmmMemoryRequest(), reply);
}

grpc::Status Daemon::ReadHypervisorLog(grpc::ServerContext*, const v1::ReadHypervisorLogRequest* request,
                                       v1::HypervisorLog* reply) {
  v1::VmmHypervisorLogRequest read;
  read.set_clear(request->clear());
  return CallRunningVmm(request->name(), &vmm::VmmControlClient::ReadHypervisorLog, read, reply);
}

grpc::Status Daemon::FollowConsole(grpc::ServerContext* context, const std::string& name, bool replay, bool follow,
                                   const std::function<bool(const std::string&)>& write) {
  std::shared_ptr<ConsoleBuffer> console;
  uint64_t run = 0;
  {
    absl::MutexLock lock(&mutex_);
    std::shared_ptr<Record> record;
    if (grpc::Status found = Lookup(name, &record); !found.ok()) return found;
    console = record->console;
    run = record->run;
  }
  uint64_t offset = replay ? 0 : console->total();
  while (!context->IsCancelled()) {
    std::string data = console->ReadFrom(offset);
    if (!data.empty() && !write(data)) break;
    if (!follow) break;
    {
      absl::MutexLock lock(&mutex_);
      std::shared_ptr<Record> record = Find(name);
      if (record == nullptr || record->run != run || !Running(record->vm)) {
        // The run ended: send what is left, then end the stream.
        std::string rest = console->ReadFrom(offset);
        if (!rest.empty()) write(rest);
        break;
      }
    }
    console->WaitBeyond(offset, absl::Milliseconds(200));
  }
  return grpc::Status::OK;
}

grpc::Status Daemon::StreamConsole(grpc::ServerContext* context, const v1::StreamConsoleRequest* request,
                                   grpc::ServerWriter<v1::ConsoleChunk>* writer) {
  return FollowConsole(context, request->name(), request->replay(), !request->no_follow(), [writer](const std::string& data) {
    v1::ConsoleChunk chunk;
    chunk.set_data(data);
    return writer->Write(chunk);
  });
}

// Input and output at once: this thread follows the output, another forwards what the client types
// to the VMM. Output goes on after the client closes its side; when the run ends the call is
// cancelled, which releases the reader.
grpc::Status Daemon::Console(grpc::ServerContext* context,
                             grpc::ServerReaderWriter<v1::ConsoleChunk, v1::ConsoleInput>* stream) {
  v1::ConsoleInput first;
  if (!stream->Read(&first)) return Error(grpc::StatusCode::INVALID_ARGUMENT, "the first message must name the VM");
  std::shared_ptr<vmm::VmmControlClient> control;
  if (grpc::Status running = RunningVmm(first.name(), &control); !running.ok()) return running;
  std::atomic<bool> input_ended{false};
  std::thread input([&] {
    v1::ConsoleInput message = first;
    do {
      if (message.data().empty()) continue;
      v1::VmmConsoleInput keys;
      keys.set_data(message.data());
      v1::VmmConsoleInputReply accepted;
      if (!control->WriteConsole(keys, &accepted, kVmmCallTimeout).ok()) break;  // the VMM went away
    } while (stream->Read(&message));
    input_ended.store(true);  // the client closed its side (or the VMM went): output goes on
  });
  grpc::Status followed = FollowConsole(context, first.name(), first.replay(), /*follow=*/true, [stream](const std::string& data) {
    v1::ConsoleChunk chunk;
    chunk.set_data(data);
    return stream->Write(chunk);
  });
  if (!input_ended.load()) context->TryCancel();  // the run ended: release the reader
  input.join();
  return followed;
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

std::vector<VmSample> Daemon::SampleVms() {
  std::vector<std::pair<VmSample, std::shared_ptr<vmm::VmmControlClient>>> samples;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [name, record] : vms_) {
      samples.push_back({VmSample{record->vm, {}, std::nullopt}, Running(record->vm) ? record->control : nullptr});
    }
  }
  std::vector<VmSample> result;
  for (auto& [sample, control] : samples) {
    AddUsage(sample.vm);
    if (control != nullptr) {
      v1::ListDevicesResponse devices;
      if (control->Devices(v1::VmmDevicesRequest(), &devices, absl::Seconds(1)).ok()) {
        sample.devices.assign(devices.devices().begin(), devices.devices().end());
      }
      v1::EventChannelList channels;
      if (control->EventChannels(v1::VmmEventChannelsRequest(), &channels, absl::Seconds(1)).ok()) {
        sample.event_channels = std::move(channels);
      }
    }
    result.push_back(std::move(sample));
  }
  return result;
}

}  // namespace xenkvm::api
