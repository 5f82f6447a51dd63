#include "vmm/control_server.h"

#include "components/base/status.h"

#include <algorithm>
#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "components/block/image.h"
#include "components/net/mac_address.h"
#include "proto/xenkvm/v1/vmm_control.pb.h"

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

class ControlServer::Service {
 public:
  Service(Vm& vm, base::FdHandoverServer* handover) : vm_(vm), handover_(handover) {
#define XENKVM_REGISTER(Name) Register(#Name, &Service::Name)
    XENKVM_REGISTER(Status);
    XENKVM_REGISTER(Pause);
    XENKVM_REGISTER(Resume);
    XENKVM_REGISTER(RequestShutdown);
    XENKVM_REGISTER(EventChannels);
    XENKVM_REGISTER(AttachDisk);
    XENKVM_REGISTER(DetachDisk);
    XENKVM_REGISTER(AttachNetwork);
    XENKVM_REGISTER(DetachNetwork);
    XENKVM_REGISTER(Devices);
    XENKVM_REGISTER(WriteConsole);
    XENKVM_REGISTER(SetMemoryTarget);
    XENKVM_REGISTER(Memory);
    XENKVM_REGISTER(ReadHypervisorLog);
#undef XENKVM_REGISTER
    const google::protobuf::ServiceDescriptor* declared = ControlService();
    for (int i = 0; i < declared->method_count() && consistent_.ok(); ++i) {
      if (!methods_.contains(declared->method(i)->name())) {
        consistent_ = absl::InternalError(absl::StrCat("control: VmmControl's ", declared->method(i)->name(), " is not served"));
      }
    }
  }

  // Whether the calls served are exactly vmm_control.proto's (a build that disagrees with its own
  // proto serves none).
  const absl::Status& consistent() const { return consistent_; }

  absl::Status Answer(const std::string& method, const std::string& request, std::string* reply) const {
    auto found = methods_.find(method);
    if (found == methods_.end()) {
      return absl::UnimplementedError(absl::StrCat("this VMM has no control call \"", method, "\""));
    }
    return found->second(request, reply);
  }

 private:
  using Method = std::function<absl::Status(const std::string& request, std::string* reply)>;

  // `name` answered by `handler`: the request parsed from its bytes, the reply serialized. The
  // name and both types must be the VmmControl rpc's own (vmm_control.proto).
  template <typename Request, typename Reply>
  void Register(const std::string& name, absl::Status (Service::*handler)(const Request&, Reply*)) {
    const google::protobuf::MethodDescriptor* declared = ControlService()->FindMethodByName(name);
    if (declared == nullptr || declared->input_type() != Request::descriptor() ||
        declared->output_type() != Reply::descriptor()) {
      consistent_ = absl::InternalError(absl::StrCat("control: ", name, " is not VmmControl's rpc of that name and types"));
      return;
    }
    methods_[name] = [this, handler, name](const std::string& bytes, std::string* out) {
      Request request;
      if (!request.ParseFromString(bytes)) {
        return absl::InvalidArgumentError(absl::StrCat("control: a malformed ", name, " request"));
      }
      Reply reply;
      XENKVM_RETURN_IF_ERROR((this->*handler)(request, &reply));
      if (!reply.SerializeToString(out)) return absl::InternalError("control: a reply could not be serialized");
      return absl::OkStatus();
    };
  }

  absl::Status Status(const v1::VmmStatusRequest&, v1::VmmStatus* reply) {
    reply->set_paused(vm_.paused());
    reply->set_accelerator(vm_.accelerator().capabilities().name);
    return absl::OkStatus();
  }
  absl::Status Pause(const v1::VmmPauseRequest&, v1::VmmReply*) {
    vm_.Pause();
    return absl::OkStatus();
  }
  absl::Status Resume(const v1::VmmResumeRequest&, v1::VmmReply*) {
    vm_.Resume();
    return absl::OkStatus();
  }
  absl::Status RequestShutdown(const v1::VmmShutdownRequest& request, v1::VmmShutdownReply* reply) {
    XENKVM_ASSIGN_OR_RETURN(bool advertised, vm_.RequestShutdown(request.reason().empty() ? "poweroff" : request.reason()));
    reply->set_guest_advertises(advertised);
    return absl::OkStatus();
  }
  absl::Status EventChannels(const v1::VmmEventChannelsRequest&, v1::EventChannelList* reply) {
    if (vm_.xen() == nullptr) return absl::FailedPreconditionError("this VM runs without the Xen interface");
    *reply = EventChannelListFrom(vm_.xen()->Statistics());
    return absl::OkStatus();
  }
  absl::Status AttachDisk(const v1::VmmAttachDiskRequest& request, v1::Device* reply) {
    xenbus::XenDiskConfig config = DiskFrom(request.disk());
    if (!request.handover_token().empty()) {
      XENKVM_ASSIGN_OR_RETURN(config.opened, TakeHandedOver(request.handover_token()));
    }
    XENKVM_ASSIGN_OR_RETURN(Vm::DiskInfo disk, vm_.AttachDisk(config));
    *reply = DeviceFrom(disk);
    return absl::OkStatus();
  }
  absl::Status DetachDisk(const v1::VmmDetachDiskRequest& request, v1::VmmDetachDiskReply* reply) {
    XENKVM_ASSIGN_OR_RETURN(bool forced, vm_.DetachDisk(request.vdev(), request.force(), DetachTimeout(request.timeout_seconds())));
    reply->set_forced(forced);
    return absl::OkStatus();
  }
  absl::Status AttachNetwork(const v1::VmmAttachNetworkRequest& request, v1::Device* reply) {
    XENKVM_ASSIGN_OR_RETURN(xenbus::XenNetConfig config, NetworkFrom(request.network()));
    if (!request.handover_token().empty()) {
      std::vector<std::string> tokens = {request.handover_token()};
      tokens.insert(tokens.end(), request.queue_handover_tokens().begin(), request.queue_handover_tokens().end());
      for (const std::string& token : tokens) {
        XENKVM_ASSIGN_OR_RETURN(std::shared_ptr<base::Fd> opened, TakeHandedOver(token));
        config.opened_tap.push_back(std::move(opened));
      }
    }
    XENKVM_ASSIGN_OR_RETURN(Vm::NetworkInfo network, vm_.AttachNetwork(config));
    *reply = DeviceFrom(network);
    return absl::OkStatus();
  }
  absl::Status DetachNetwork(const v1::VmmDetachNetworkRequest& request, v1::VmmDetachDiskReply* reply) {
    XENKVM_ASSIGN_OR_RETURN(bool forced,
                            vm_.DetachNetwork(request.devid(), request.force(), DetachTimeout(request.timeout_seconds())));
    reply->set_forced(forced);
    return absl::OkStatus();
  }
  absl::Status WriteConsole(const v1::VmmConsoleInput& request, v1::VmmConsoleInputReply* reply) {
    reply->set_accepted(vm_.SendConsoleInput(request.data()));
    return absl::OkStatus();
  }
  absl::Status SetMemoryTarget(const v1::VmmMemoryTargetRequest& request, v1::MemoryStatus* reply) {
    return MemoryReply(vm_.SetMemoryTarget(request.target_kib()), reply);
  }
  absl::Status Memory(const v1::VmmMemoryRequest&, v1::MemoryStatus* reply) { return MemoryReply(vm_.Memory(), reply); }
  absl::Status ReadHypervisorLog(const v1::VmmHypervisorLogRequest& request, v1::HypervisorLog* reply) {
    XENKVM_ASSIGN_OR_RETURN(HypervisorLog::Contents log, vm_.ReadHypervisorLog(request.clear()));
    reply->set_text(log.text);
    reply->set_dropped_bytes(log.dropped_bytes);
    return absl::OkStatus();
  }
  absl::Status Devices(const v1::VmmDevicesRequest&, v1::ListDevicesResponse* reply) {
    for (const Vm::DiskInfo& disk : vm_.Disks()) *reply->add_devices() = DeviceFrom(disk);
    for (const Vm::NetworkInfo& network : vm_.Networks()) *reply->add_devices() = DeviceFrom(network);
    return absl::OkStatus();
  }

  static const google::protobuf::ServiceDescriptor* ControlService() {
    return v1::VmmCall::descriptor()->file()->FindServiceByName("VmmControl");
  }
  static absl::Duration DetachTimeout(uint32_t seconds) { return absl::Seconds(seconds != 0 ? seconds : 10); }
  static absl::Status MemoryReply(const absl::StatusOr<Vm::MemoryStatus>& memory, v1::MemoryStatus* reply) {
    if (!memory.ok()) return memory.status();
    reply->set_target_kib(memory->target_kib);
    reply->set_current_kib(memory->current_kib);
    reply->set_max_kib(memory->max_kib);
    return absl::OkStatus();
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
  absl::flat_hash_map<std::string, Method> methods_;  // filled by the constructor only
  absl::Status consistent_;
};

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& socket_path, Vm& vm,
                                                                    base::FdHandoverServer* handover) {
  auto server = std::unique_ptr<ControlServer>(new ControlServer());
  server->service_ = std::make_unique<Service>(vm, handover);
  XENKVM_RETURN_IF_ERROR(server->service_->consistent());
  XENKVM_ASSIGN_OR_RETURN(server->socket_, ControlSocketServer::Start(socket_path, [service = server->service_.get()](
                                                                          const std::string& method, const std::string& request,
                                                                          std::string* reply) {
                            return service->Answer(method, request, reply);
                          }));
  return server;
}

ControlServer::~ControlServer() = default;

}  // namespace xenkvm::vmm
