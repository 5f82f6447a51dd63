// xenkvmd's Prometheus endpoint (--metrics-listen ADDRESS:PORT, off by default), served by
// prometheus-cpp: per-VM state, vCPUs, memory, the VMM's CPU time and RSS, per-disk requests,
// bytes and errors, per-vif packets, bytes, drops and errors each way, per-port event counts,
// hypercall counts, and the daemon's API calls by method and status code. The numbers are read
// when scraped (VMMs asked with a 1 s deadline each).
#ifndef XENKVM_API_METRICS_H_
#define XENKVM_API_METRICS_H_

#include <grpcpp/support/server_interceptor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/client_metric.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"
#include "proto/xenkvm/v1/vm.pb.h"

namespace xenkvm::api {

// One VM as scraped: what the API shows, and for a running one its VMM's devices and event
// channels (empty when the VMM did not answer in time).
struct VmSample {
  v1::Vm vm;
  std::vector<v1::Device> devices;
  std::optional<v1::EventChannelList> event_channels;
};

// API calls by method and gRPC status code, counted by a server interceptor.
class ApiCallCounter {
 public:
  void Count(const std::string& method, grpc::StatusCode code);
  std::map<std::pair<std::string, int>, uint64_t> Snapshot() const;
  // For grpc::ServerBuilder::experimental().SetInterceptorCreators.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

 private:
  mutable absl::Mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> calls_ ABSL_GUARDED_BY(mutex_);
};

class MetricsEndpoint {
 public:
  // Serves /metrics on `address` ("127.0.0.1:9100", "[::]:9100"...). kInvalidArgument when it
  // cannot listen there.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                              std::function<std::vector<VmSample>()> sample,
                                                              const ApiCallCounter& calls);
  ~MetricsEndpoint();
  // The port it listens on (the one the system chose for port 0).
  int port() const;

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Collectable> collectable_;
};

// The metric families for `samples` and `calls` (what /metrics serves), for tests and the endpoint.
std::vector<prometheus::MetricFamily> CollectMetrics(const std::vector<VmSample>& samples,
                                                     const std::map<std::pair<std::string, int>, uint64_t>& calls);

}  // namespace xenkvm::api

#endif  // XENKVM_API_METRICS_H_
