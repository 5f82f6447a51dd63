// xenkvmd: serves xenkvm's VmService on a Unix socket and runs each VM in its own xenkvm-vmm.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <limits.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "api/daemon.h"
#include "components/base/lock_checks.h"
#include "components/base/log.h"
#include "components/base/version.h"
#include "spdlog/spdlog.h"

namespace {

constexpr char kDefaultSocket[] = "/run/xenkvm/xenkvmd.sock";
constexpr char kDefaultStateDir[] = "/var/lib/xenkvm";
constexpr int kMaxRequestBytes = 1 << 20;

constexpr char kDescription[] =
    "Serves xenkvm's VmService (gRPC) on a Unix socket and runs each VM in its own xenkvm-vmm process.\n"
    "SIGTERM or SIGINT shuts the running VMs down (30 s deadline), then stops the daemon; with\n"
    "--keep-vms they run on. Each VM's xenkvm-vmm runs in a session of its own: if the daemon dies,\n"
    "its VMs run on, and a daemon started on the same state directory takes them over.";

// Whether a process accepts connections on the Unix socket at `path`.
bool SomeoneListens(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  path.copy(address.sun_path, sizeof address.sun_path - 1);
  const bool connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return connected;
}

std::string DefaultVmmPath() {
  char self[PATH_MAX] = {};
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "xenkvm-vmm";
  std::filesystem::path dir = std::filesystem::path(std::string(self, n)).parent_path();
  for (const std::filesystem::path& candidate : {dir / "xenkvm-vmm", dir / ".." / "vmm" / "xenkvm-vmm"}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.lexically_normal().string();
  }
  return (dir / "xenkvm-vmm").string();
}

}  // namespace

int main(int argc, char** argv) {
  xenkvm::base::DisableLockOrderChecks();
  xenkvm::api::Daemon::Options options;
  options.state_dir = kDefaultStateDir;
  std::string socket = kDefaultSocket;
  std::string log_level;
  CLI::App app(kDescription, "xenkvmd");
  app.set_version_flag("--version", std::string("xenkvmd ") + xenkvm::base::kVersion);
  app.add_option("--socket", socket, "the API socket, mode 0600")->capture_default_str();
  app.add_option("--state-dir", options.state_dir, "VM definitions, logs and per-VM sockets")->capture_default_str();
  app.add_option("--vmm", options.vmm_path, "the xenkvm-vmm binary (default: beside xenkvmd, or ../vmm/xenkvm-vmm)");
  app.add_option("--max-vms", options.max_vms, "VMs this daemon defines at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--image-dir", options.image_dirs,
                 "kernels, initrds and disk images must lie under this directory (repeatable; default: anywhere)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_flag("--keep-vms", options.keep_vms, "leave running VMs running when the daemon stops");
  app.add_option("--vmm-user", options.vmm_user,
                 "each VMM becomes this user (name or UID:GID) once its VM is built (default: VMMs stay root)");
  std::string metrics_listen;
  app.add_option("--metrics-listen", metrics_listen,
                 "serve Prometheus metrics at http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9100; default off)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off (default $XENKVM_LOG or info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 1;  // --help and --version: 0; bad usage: 1, said on stderr
  }
  if (absl::Status logging = xenkvm::base::InitLogging(log_level); !logging.ok()) {
    std::fprintf(stderr, "xenkvmd: %s\n", std::string(logging.message()).c_str());
    return 1;
  }
  if (options.vmm_path.empty()) options.vmm_path = DefaultVmmPath();
  if (socket.size() > 107) {
    std::fprintf(stderr, "xenkvmd: --socket: %s is longer than a Unix socket path can be\n", socket.c_str());
    return 1;
  }

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<xenkvm::api::Daemon>> daemon = xenkvm::api::Daemon::Create(options);
  if (!daemon.ok()) {
    std::fprintf(stderr, "xenkvmd: %s\n", std::string(daemon.status().message()).c_str());
    return 2;
  }
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(socket).parent_path(), error);
  if (SomeoneListens(socket)) {  // another daemon's socket (with another state directory): keep it
    std::fprintf(stderr, "xenkvmd: another xenkvmd serves on %s: stop it first, or give this one another --socket\n",
                 socket.c_str());
    return 2;
  }
  unlink(socket.c_str());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  xenkvm::api::ApiCallCounter api_calls;
  std::unique_ptr<xenkvm::api::MetricsEndpoint> metrics;
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<xenkvm::api::MetricsEndpoint>> started = xenkvm::api::MetricsEndpoint::Start(
        metrics_listen, [raw = daemon->get()] { return raw->SampleVms(); }, api_calls);
    if (!started.ok()) {
      std::fprintf(stderr, "xenkvmd: %s\n", std::string(started.status().message()).c_str());
      return 2;
    }
    metrics = std::move(*started);
    std::fprintf(stderr, "xenkvmd: metrics on port %d (%s)\n", metrics->port(), metrics_listen.c_str());
  }
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(api_calls.InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(absl::StrCat("unix:", socket), grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  builder.RegisterService(daemon->get());
  mode_t old_umask = umask(0077);  // the socket is created 0600
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  umask(old_umask);
  if (server == nullptr) {
    std::fprintf(stderr, "xenkvmd: cannot listen on %s (is another xenkvmd running?)\n", socket.c_str());
    return 2;
  }
  chmod(socket.c_str(), 0600);
  spdlog::info("xenkvmd: serving on {}, state in {}, VMMs from {}", socket, options.state_dir, options.vmm_path);
  std::fprintf(stderr, "xenkvmd: listening on %s\n", socket.c_str());

  std::thread stopper([&] {
    int signal = 0;
    sigwait(&stop_signals, &signal);
    if (options.keep_vms) {
      spdlog::info("xenkvmd: signal {}: stopping, {} VM(s) left running", signal, (*daemon)->RunningVms());
    } else {
      spdlog::info("xenkvmd: signal {}: shutting the VMs down", signal);
      (*daemon)->ShutdownAll(absl::Seconds(30));
    }
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  server->Wait();
  stopper.join();
  unlink(socket.c_str());
  std::fprintf(stderr, "xenkvmd: stopped\n");
  return 0;
}
