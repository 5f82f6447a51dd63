#include "vmm/control_server.h"

#include "components/base/status.h"

#include <grpcpp/grpcpp.h>
#include <algorithm>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "components/block/image.h"
#include "components/net/mac_address.h"
#include "proto/xenkvm/v1/vmm_control.grpc.pb.h"

namespace xenkvm::vmm {
namespace {

xenbus::XenDiskConfig DiskFrom(const v1::DiskConfig& disk) {
  xenbus::XenDiskConfig config;
  config.path = disk.path();
  config.vdev = disk.vdev();
  config.read_only = disk.read_only();
  // xenkvmd validated it; an unknown name keeps the default.
  config.cache = block::ParseCacheMode(disk.cache()).value_or(block::CacheMode::kWriteback);
  if (disk.features_size() > 0) {  // only what is listed
    auto has = [&disk](const char* feature) {
      return std::find(disk.features().begin(), disk.features().end(), feature) != disk.features().end();
    };
    config.flush = has("flush");
    config.discard = has("discard");
    config.persistent_grants = has("persistent");
    config.max_indirect_segments = has("indirect") ? config.max_indirect_segments : 0;
  }
  return config;
}

// xenkvmd checked the fields (through the vif parser); the MAC is checked again, being needed here.
absl::StatusOr<xenbus::XenNetConfig> NetworkFrom(const v1::NetworkConfig& network) {
  xenbus::XenNetConfig config;
  config.mac = net::GenerateXenMac();
  if (!network.mac().empty()) {
    absl::StatusOr<net::MacAddress> mac = net::ParseMac(network.mac());
    if (!mac.ok()) return mac.status();
    config.mac = *mac;
  }
  config.bridge = network.bridge();
  config.tap = network.tap();
  config.mtu = network.mtu();
  for (const auto& [text, limit] : {std::pair{&network.rate(), &config.tx_rate}, std::pair{&network.rx_rate(), &config.rx_rate}}) {
    if (text->empty()) continue;
    absl::StatusOr<xenbus::RateLimit> rate = xenbus::ParseVifRate(*text);
    if (!rate.ok()) return rate.status();
    *limit = *rate;
  }
  return config;
}

v1::Device DeviceFrom(const Vm::NetworkInfo& network) {
  v1::Device device;
  device.set_kind("xen-net");
  device.set_id(absl::StrCat(network.config.devid));
  device.set_backend_state(xenbus::XenbusStateName(network.backend_state));
  device.set_frontend_state(xenbus::XenbusStateName(network.frontend_state));
  v1::NetworkConfig* config = device.mutable_network();
  config->set_mac(net::FormatMac(network.config.mac));
  config->set_bridge(network.config.bridge);
  config->set_tap(network.tap);
  config->set_mtu(network.config.mtu);
  if (network.config.tx_rate) config->set_rate(xenbus::FormatVifRate(*network.config.tx_rate));
  if (network.config.rx_rate) config->set_rx_rate(xenbus::FormatVifRate(*network.config.rx_rate));
  const xenbus::NetRingStatistics counters = network.statistics.value_or(xenbus::NetRingStatistics{});
  v1::NetworkStatistics* statistics = device.mutable_network_statistics();
  statistics->set_tx_packets(counters.tx_packets);
  statistics->set_tx_bytes(counters.tx_bytes);
  statistics->set_tx_dropped(counters.tx_dropped);
  statistics->set_tx_errors(counters.tx_errors);
  statistics->set_rx_packets(counters.rx_packets);
  statistics->set_rx_bytes(counters.rx_bytes);
  statistics->set_rx_dropped(counters.rx_dropped);
  statistics->set_rx_errors(counters.rx_errors);
  statistics->set_broken_reason(counters.broken_reason);
  return device;
}

v1::Device DeviceFrom(const Vm::DiskInfo& disk) {
  v1::Device device;
  device.set_kind("xen-disk");
  device.set_id(disk.config.vdev);
  device.set_backend_state(xenbus::XenbusStateName(disk.backend_state));
  device.set_frontend_state(xenbus::XenbusStateName(disk.frontend_state));
  v1::DiskConfig* config = device.mutable_disk();
  config->set_path(disk.config.path);
  config->set_vdev(disk.config.vdev);
  config->set_read_only(disk.config.read_only);
  if (disk.config.flush) config->add_features("flush");
  if (disk.config.discard) config->add_features("discard");
  if (disk.config.persistent_grants) config->add_features("persistent");
  if (disk.config.max_indirect_segments > 0) config->add_features("indirect");
  // Before the frontend connects: zeros, with the histogram's buckets.
  const xenbus::DiskRingStatistics counters = disk.statistics.value_or(xenbus::DiskRingStatistics{});
  {
    v1::DiskStatistics* statistics = device.mutable_statistics();
    statistics->set_requests(counters.requests);
    statistics->set_errors(counters.errors);
    statistics->set_unsupported(counters.unsupported);
    statistics->set_bytes_read(counters.bytes_read);
    statistics->set_bytes_written(counters.bytes_written);
    statistics->set_flushes(counters.flushes);
    statistics->set_discards(counters.discards);
    for (double bound : xenbus::kLatencyBounds) statistics->add_latency_bounds_seconds(bound);
    for (uint64_t count : counters.latency_counts) statistics->add_latency_counts(count);
    statistics->set_latency_seconds_sum(counters.latency_seconds_sum);
  }
  return device;
}

grpc::Status GrpcError(const absl::Status& status) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case absl::StatusCode::kNotFound: code = grpc::StatusCode::NOT_FOUND; break;
    case absl::StatusCode::kAlreadyExists: code = grpc::StatusCode::ALREADY_EXISTS; break;
    case absl::StatusCode::kPermissionDenied: code = grpc::StatusCode::PERMISSION_DENIED; break;
    case absl::StatusCode::kFailedPrecondition: code = grpc::StatusCode::FAILED_PRECONDITION; break;
    default: break;
  }
  return grpc::Status(code, std::string(status.message()));
}

}  // namespace

v1::EventChannelList EventChannelListFrom(const xen::ShimStatistics& statistics) {
  v1::EventChannelList list;
  for (const xen::PortSnapshot& port : statistics.ports) {
    v1::EventChannel* out = list.add_ports();
    out->set_port(port.port);
    out->set_vcpu(port.vcpu);
    out->set_type(xen::PortTypeName(port.type));
    out->set_remote(port.remote);
    out->set_remote_domain(port.remote_domain);
    out->set_target(port.target);
    out->set_pending(port.pending);
    out->set_masked(port.masked);
    out->set_sends(port.counters.sends);
    out->set_deliveries(port.counters.deliveries);
    out->set_upcalls(port.counters.upcalls);
    out->set_masked_deliveries(port.counters.masked);
  }
  for (uint32_t number = 0; number < statistics.hypercalls.size(); ++number) {
    if (statistics.hypercalls[number] == 0) continue;
    v1::HypercallCount* count = list.add_hypercalls();
    count->set_number(number);
    const char* name = xen::HypercallName(number);
    count->set_name(name != nullptr ? name : "unknown");
    count->set_count(statistics.hypercalls[number]);
  }
  list.set_unknown_hypercalls(statistics.unknown_hypercalls);
  list.set_refused_user_hypercalls(statistics.refused_cpl);
  return list;
}

class ControlServer::Service final : public v1::VmmControl::Service {
 public:
  Service(Vm& vm, base::FdHandoverServer* handover) : vm_(vm), handover_(handover) {}

  grpc::Status Status(grpc::ServerContext*, const v1::VmmStatusRequest*, v1::VmmStatus* reply) override {
    reply->set_paused(vm_.paused());
    reply->set_accelerator(vm_.accelerator().capabilities().name);
    return grpc::Status::OK;
  }
  grpc::Status Pause(grpc::ServerContext*, const v1::VmmPauseRequest*, v1::VmmReply*) override {
    vm_.Pause();
    return grpc::Status::OK;
  }
  grpc::Status Resume(grpc::ServerContext*, const v1::VmmResumeRequest*, v1::VmmReply*) override {
    vm_.Resume();
    return grpc::Status::OK;
  }
  grpc::Status RequestShutdown(grpc::ServerContext*, const v1::VmmShutdownRequest* request,
                               v1::VmmShutdownReply* reply) override {
    absl::StatusOr<bool> advertised = vm_.RequestShutdown(request->reason().empty() ? "poweroff" : request->reason());
    if (!advertised.ok()) return GrpcError(advertised.status());
    reply->set_guest_advertises(*advertised);
    return grpc::Status::OK;
  }
  grpc::Status EventChannels(grpc::ServerContext*, const v1::VmmEventChannelsRequest*,
                             v1::EventChannelList* reply) override {
    if (vm_.xen() == nullptr) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this VM runs without the Xen interface");
    }
    *reply = EventChannelListFrom(vm_.xen()->Statistics());
    return grpc::Status::OK;
  }
  grpc::Status AttachDisk(grpc::ServerContext*, const v1::VmmAttachDiskRequest* request, v1::Device* reply) override {
    xenbus::XenDiskConfig config = DiskFrom(request->disk());
    if (!request->handover_token().empty()) {
      absl::StatusOr<std::shared_ptr<base::Fd>> opened = TakeHandedOver(request->handover_token());
      if (!opened.ok()) return GrpcError(opened.status());
      config.opened = std::move(*opened);
    }
    absl::StatusOr<Vm::DiskInfo> disk = vm_.AttachDisk(config);
    if (!disk.ok()) return GrpcError(disk.status());
    *reply = DeviceFrom(*disk);
    return grpc::Status::OK;
  }
  grpc::Status DetachDisk(grpc::ServerContext*, const v1::VmmDetachDiskRequest* request,
                          v1::VmmDetachDiskReply* reply) override {
    absl::StatusOr<bool> forced = vm_.DetachDisk(request->vdev(), request->force(),
                                                 absl::Seconds(request->timeout_seconds() ? request->timeout_seconds() : 10));
    if (!forced.ok()) return GrpcError(forced.status());
    reply->set_forced(*forced);
    return grpc::Status::OK;
  }
  grpc::Status AttachNetwork(grpc::ServerContext*, const v1::VmmAttachNetworkRequest* request,
                             v1::Device* reply) override {
    absl::StatusOr<xenbus::XenNetConfig> config = NetworkFrom(request->network());
    if (!config.ok()) return GrpcError(config.status());
    if (!request->handover_token().empty()) {
      std::vector<std::string> tokens = {request->handover_token()};
      tokens.insert(tokens.end(), request->queue_handover_tokens().begin(), request->queue_handover_tokens().end());
      for (const std::string& token : tokens) {
        absl::StatusOr<std::shared_ptr<base::Fd>> opened = TakeHandedOver(token);
        if (!opened.ok()) return GrpcError(opened.status());
        config->opened_tap.push_back(std::move(*opened));
      }
    }
    absl::StatusOr<Vm::NetworkInfo> network = vm_.AttachNetwork(*config);
    if (!network.ok()) return GrpcError(network.status());
    *reply = DeviceFrom(*network);
    return grpc::Status::OK;
  }
  grpc::Status DetachNetwork(grpc::ServerContext*, const v1::VmmDetachNetworkRequest* request,
                             v1::VmmDetachDiskReply* reply) override {
    absl::StatusOr<bool> forced = vm_.DetachNetwork(
        request->devid(), request->force(), absl::Seconds(request->timeout_seconds() ? request->timeout_seconds() : 10));
    if (!forced.ok()) return GrpcError(forced.status());
    reply->set_forced(*forced);
    return grpc::Status::OK;
  }
  grpc::Status WriteConsole(grpc::ServerContext*, const v1::VmmConsoleInput* request,
                            v1::VmmConsoleInputReply* reply) override {
    reply->set_accepted(vm_.SendConsoleInput(request->data()));
    return grpc::Status::OK;
  }
  grpc::Status SetMemoryTarget(grpc::ServerContext*, const v1::VmmMemoryTargetRequest* request,
                               v1::MemoryStatus* reply) override {
    return MemoryReply(vm_.SetMemoryTarget(request->target_kib()), reply);
  }
  grpc::Status Memory(grpc::ServerContext*, const v1::VmmMemoryRequest*, v1::MemoryStatus* reply) override {
    return MemoryReply(vm_.Memory(), reply);
  }
  grpc::Status ReadHypervisorLog(grpc::ServerContext*, const v1::VmmHypervisorLogRequest* request,
                             v1::HypervisorLog* reply) override {
    absl::StatusOr<HypervisorLog::Contents> log = vm_.ReadHypervisorLog(request->clear());
    if (!log.ok()) return GrpcError(log.status());
    reply->set_text(log->text);
    reply->set_dropped_bytes(log->dropped_bytes);
    return grpc::Status::OK;
  }
  grpc::Status Devices(grpc::ServerContext*, const v1::VmmDevicesRequest*, v1::ListDevicesResponse* reply) override {
    for (const Vm::DiskInfo& disk : vm_.Disks()) *reply->add_devices() = DeviceFrom(disk);
    for (const Vm::NetworkInfo& network : vm_.Networks()) *reply->add_devices() = DeviceFrom(network);
    return grpc::Status::OK;
  }

 private:
  static grpc::Status MemoryReply(const absl::StatusOr<Vm::MemoryStatus>& memory, v1::MemoryStatus* reply) {
    if (!memory.ok()) return GrpcError(memory.status());
    reply->set_target_kib(memory->target_kib);
    reply->set_current_kib(memory->current_kib);
    reply->set_max_kib(memory->max_kib);
    return grpc::Status::OK;
  }
  absl::StatusOr<std::shared_ptr<base::Fd>> TakeHandedOver(const std::string& token) {
    if (handover_ == nullptr) {
      return absl::FailedPreconditionError("a file handed over was named, but this VMM has no --handover-socket");
    }
    XENKVM_ASSIGN_OR_RETURN(base::Fd fd, handover_->Take(token));
    return std::make_shared<base::Fd>(std::move(fd));
  }

  Vm& vm_;
  base::FdHandoverServer* const handover_;
};

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& socket_path, Vm& vm,
                                                                    base::FdHandoverServer* handover) {
  auto server = std::unique_ptr<ControlServer>(new ControlServer());
  server->service_ = std::make_unique<Service>(vm, handover);
  server->socket_path_ = socket_path;
  unlink(socket_path.c_str());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("unix:", socket_path), grpc::InsecureServerCredentials());
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("control socket: cannot listen on ", socket_path));
  }
  chmod(socket_path.c_str(), 0600);
  return server;
}

ControlServer::~ControlServer() {
  if (server_) server_->Shutdown();
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
}

}  // namespace xenkvm::vmm
