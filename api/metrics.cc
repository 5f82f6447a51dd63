#include "api/metrics.h"

#include <tuple>

#include <exception>
#include <limits>

#include "absl/strings/str_cat.h"
#include "api/config.h"

namespace xenkvm::api {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const char* name, const char* help, MetricType type) {
  MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void Add(MetricFamily& family, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

class ApiCallInterceptor final : public grpc::experimental::Interceptor {
 public:
  ApiCallInterceptor(ApiCallCounter& counter, std::string method) : counter_(counter), method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      counter_.Count(method_, methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  ApiCallCounter& counter_;
  const std::string method_;
};

class ApiCallInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ApiCallInterceptorFactory(ApiCallCounter& counter) : counter_(counter) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    std::string method = info->method();
    if (size_t slash = method.rfind('/'); slash != std::string::npos) method = method.substr(slash + 1);
    return new ApiCallInterceptor(counter_, std::move(method));
  }

 private:
  ApiCallCounter& counter_;
};

class Collector final : public prometheus::Collectable {
 public:
  Collector(std::function<std::vector<VmSample>()> sample, const ApiCallCounter& calls)
      : sample_(std::move(sample)), calls_(calls) {}
  std::vector<MetricFamily> Collect() const override { return CollectMetrics(sample_(), calls_.Snapshot()); }

 private:
  std::function<std::vector<VmSample>()> sample_;
  const ApiCallCounter& calls_;
};

const char* GrpcCodeName(int code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                       "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < 17 ? kNames[code] : "UNKNOWN";
}

}  // namespace

void ApiCallCounter::Count(const std::string& method, grpc::StatusCode code) {
  absl::MutexLock lock(&mutex_);
  ++calls_[{method, static_cast<int>(code)}];
}

std::map<std::pair<std::string, int>, uint64_t> ApiCallCounter::Snapshot() const {
  absl::MutexLock lock(&mutex_);
  return calls_;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> ApiCallCounter::InterceptorFactory() {
  return std::make_unique<ApiCallInterceptorFactory>(*this);
}

std::vector<MetricFamily> CollectMetrics(const std::vector<VmSample>& samples,
                                         const std::map<std::pair<std::string, int>, uint64_t>& calls) {
  MetricFamily state = Family("xenkvm_vm_state", "1 for the VM's current state", MetricType::Gauge);
  MetricFamily vcpus = Family("xenkvm_vm_vcpus", "virtual CPUs", MetricType::Gauge);
  MetricFamily memory = Family("xenkvm_vm_memory_bytes", "guest RAM", MetricType::Gauge);
  MetricFamily cpu = Family("xenkvm_vm_cpu_seconds_total", "CPU time of the VM's VMM process (vCPUs and backends)",
                            MetricType::Counter);
  MetricFamily vcpu_time = Family("xenkvm_vcpu_seconds_total", "CPU time of the thread running a vCPU's guest code",
                                  MetricType::Counter);
  MetricFamily rss = Family("xenkvm_vmm_resident_bytes", "resident memory of the VM's VMM process", MetricType::Gauge);
  MetricFamily requests = Family("xenkvm_disk_requests_total", "xen-disk requests", MetricType::Counter);
  MetricFamily bytes = Family("xenkvm_disk_bytes_total", "xen-disk bytes moved", MetricType::Counter);
  MetricFamily errors = Family("xenkvm_disk_errors_total", "xen-disk requests answered with an error", MetricType::Counter);
  MetricFamily latency = Family("xenkvm_disk_request_seconds",
                                "xen-disk service time, the request taken off the ring to its response", MetricType::Histogram);
  // Per vif; direction "tx" is the guest sending, "rx" the guest receiving (netback's view).
  MetricFamily net_packets = Family("xenkvm_net_packets_total", "xen-net packets moved", MetricType::Counter);
  MetricFamily net_bytes = Family("xenkvm_net_bytes_total", "xen-net bytes moved", MetricType::Counter);
  MetricFamily net_dropped = Family("xenkvm_net_dropped_total", "xen-net packets dropped", MetricType::Counter);
  MetricFamily net_errors = Family("xenkvm_net_errors_total", "xen-net packets that failed", MetricType::Counter);
  MetricFamily events = Family("xenkvm_evtchn_deliveries_total", "events delivered on a port", MetricType::Counter);
  MetricFamily sends = Family("xenkvm_evtchn_sends_total", "EVTCHNOP_send on a port", MetricType::Counter);
  MetricFamily hypercalls = Family("xenkvm_hypercalls_total", "hypercalls by name", MetricType::Counter);
  MetricFamily api = Family("xenkvm_api_calls_total", "xenkvmd API calls by method and status code", MetricType::Counter);
  for (const VmSample& sample : samples) {
    const std::string& name = sample.vm.config().name();
    Add(state, {{"vm", name}, {"state", VmStateName(sample.vm.state())}}, 1);
    Add(vcpus, {{"vm", name}}, sample.vm.config().vcpus());
    Add(memory, {{"vm", name}}, static_cast<double>(sample.vm.config().memory_mib()) * 1024 * 1024);
    if (sample.vm.pid() == 0) continue;
    Add(cpu, {{"vm", name}}, sample.vm.cpu_seconds());
    Add(rss, {{"vm", name}}, static_cast<double>(sample.vm.rss_bytes()));
    for (int vcpu = 0; vcpu < sample.vm.vcpu_seconds_size(); ++vcpu) {
      Add(vcpu_time, {{"vm", name}, {"vcpu", absl::StrCat(vcpu)}}, sample.vm.vcpu_seconds(vcpu));
    }
    for (const v1::Device& device : sample.devices) {
      if (device.kind() == "xen-net") {
        const v1::NetworkStatistics& n = device.network_statistics();
        for (const auto& [direction, packets, octets, dropped, failed] :
             {std::tuple{"tx", n.tx_packets(), n.tx_bytes(), n.tx_dropped(), n.tx_errors()},
              std::tuple{"rx", n.rx_packets(), n.rx_bytes(), n.rx_dropped(), n.rx_errors()}}) {
          const std::vector<ClientMetric::Label> labels = {{"vm", name}, {"vif", device.id()}, {"direction", direction}};
          Add(net_packets, labels, static_cast<double>(packets));
          Add(net_bytes, labels, static_cast<double>(octets));
          Add(net_dropped, labels, static_cast<double>(dropped));
          Add(net_errors, labels, static_cast<double>(failed));
        }
      }
      if (device.kind() != "xen-disk") continue;
      const v1::DiskStatistics& s = device.statistics();
      Add(requests, {{"vm", name}, {"disk", device.id()}}, static_cast<double>(s.requests()));
      Add(bytes, {{"vm", name}, {"disk", device.id()}, {"direction", "read"}}, static_cast<double>(s.bytes_read()));
      Add(bytes, {{"vm", name}, {"disk", device.id()}, {"direction", "write"}}, static_cast<double>(s.bytes_written()));
      Add(errors, {{"vm", name}, {"disk", device.id()}}, static_cast<double>(s.errors() + s.unsupported()));
      if (s.latency_counts_size() == s.latency_bounds_seconds_size() + 1) {
        ClientMetric histogram;
        histogram.label = {{"vm", name}, {"disk", device.id()}};
        uint64_t cumulative = 0;
        for (int i = 0; i < s.latency_counts_size(); ++i) {
          cumulative += s.latency_counts(i);
          const double bound = i < s.latency_bounds_seconds_size() ? s.latency_bounds_seconds(i)
                                                                   : std::numeric_limits<double>::infinity();
          histogram.histogram.bucket.push_back({cumulative, bound});
        }
        histogram.histogram.sample_count = cumulative;
        histogram.histogram.sample_sum = s.latency_seconds_sum();
        latency.metric.push_back(std::move(histogram));
      }
    }
    if (!sample.event_channels) continue;
    for (const v1::EventChannel& port : sample.event_channels->ports()) {
      std::vector<ClientMetric::Label> labels = {{"vm", name}, {"port", absl::StrCat(port.port())}, {"type", port.type()}};
      Add(events, labels, static_cast<double>(port.deliveries()));
      Add(sends, labels, static_cast<double>(port.sends()));
    }
    for (const v1::HypercallCount& call : sample.event_channels->hypercalls()) {
      Add(hypercalls, {{"vm", name}, {"hypercall", call.name()}}, static_cast<double>(call.count()));
    }
  }
  for (const auto& [key, count] : calls) {
    Add(api, {{"method", key.first}, {"code", GrpcCodeName(key.second)}}, static_cast<double>(count));
  }
  return {state,  vcpus,      memory,      cpu,        vcpu_time, rss,    requests,   bytes,     errors,
          latency, net_packets, net_bytes, net_dropped, net_errors, events, sends, hypercalls, api};
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                        std::function<std::vector<VmSample>()> sample,
                                                                        const ApiCallCounter& calls) {
  auto endpoint = std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint());
  try {
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
  } catch (const std::exception& error) {  // civetweb cannot listen there
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen ", address, ": cannot listen there (", error.what(), "); give ADDRESS:PORT"));
  }
  endpoint->collectable_ = std::make_shared<Collector>(std::move(sample), calls);
  endpoint->exposer_->RegisterCollectable(endpoint->collectable_);
  return endpoint;
}

int MetricsEndpoint::port() const {
  std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

MetricsEndpoint::~MetricsEndpoint() {
  if (exposer_) exposer_->RemoveCollectable(collectable_);
}

}  // namespace xenkvm::api
