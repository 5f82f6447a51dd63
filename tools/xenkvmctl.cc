// xenkvmctl: xenkvm's command line, with verbs modelled on Xen's xl, speaking xenkvmd's VmService.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "api/config.h"
#include "google/protobuf/util/json_util.h"
#include "proto/xenkvm/v1/vm.grpc.pb.h"

namespace {

using xenkvm::v1::VmService;
namespace v1 = xenkvm::v1;

constexpr char kDefaultSocket[] = "/run/xenkvm/xenkvmd.sock";

constexpr char kUsage[] =
    "usage: xenkvmctl [--socket PATH] [--json] VERB [ARGS]\n"
    "\n"
    "Talks to xenkvmd (socket: --socket, else $XENKVM_SOCKET, else /run/xenkvm/xenkvmd.sock).\n"
    "Verbs (after Xen's xl):\n"
    "  create FILE [-p]                define a VM from a config file (JSON VmConfig or xl.cfg) and\n"
    "                                  start it; -p: define it only (start it with `start`)\n"
    "  start NAME                      start a defined or ended VM\n"
    "  list                            every VM: name, state, vCPUs, memory, accelerator, pid\n"
    "  info NAME                       one VM in detail\n"
    "  pause NAME | unpause NAME       stop or resume the vCPUs\n"
    "  shutdown NAME [--timeout S]     ask the guest to power off (XenStore control/shutdown, as xl);\n"
    "                                  destroy it if it has not after S seconds (30)\n"
    "  destroy NAME                    end the VM at once\n"
    "  delete NAME                     forget a VM that is not running\n"
    "  block-attach NAME PATH [VDEV] [--ro]      hot-plug a xen-disk\n"
    "  block-detach NAME VDEV [--force] [--timeout S]\n"
    "  block-list NAME                 the VM's devices\n"
    "  console NAME [--no-follow] [--no-replay]  the guest console (replayed, then followed)\n"
    "  evtchn NAME                     open event channels with their counters, and hypercall counts\n"
    "  events [NAME]                   lifecycle and device events as they happen\n"
    "--json prints the read verbs' results as JSON. Exit status 0 on success, 1 with a one-line\n"
    "reason on failure, 2 on bad usage.\n";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // --name -> value ("" for switches)
  bool Has(const std::string& name) const { return options.count(name) > 0; }
};

const char* kValueOptions[] = {"--socket", "--timeout"};

int UsageError(const std::string& error) {
  std::fprintf(stderr, "xenkvmctl: %s\n\n%s", error.c_str(), kUsage);
  return 2;
}

int Fail(const std::string& verb, const grpc::Status& status) {
  static const char* const kCodes[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                       "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  int code = status.error_code();
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE && message.find("connect") != std::string::npos) {
    message += " (is xenkvmd running? give its socket with --socket or XENKVM_SOCKET)";
  }
  std::fprintf(stderr, "xenkvmctl: %s: %s (%s)\n", verb.c_str(), message.c_str(),
               code >= 0 && code < 17 ? kCodes[code] : "?");
  return 1;
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string State(v1::VmState state) { return xenkvm::api::VmStateName(state); }

// Prints rows as columns padded to their widest cell.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      if (widths.size() <= i) widths.push_back(0);
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += i + 1 == row.size() ? row[i] : absl::StrFormat("%-*s  ", widths[i], row[i]);
    }
    std::printf("%s\n", line.c_str());
  }
}

void PrintVm(const v1::Vm& vm) {
  const v1::VmConfig& c = vm.config();
  PrintTable({{"name:", c.name()},
              {"state:", State(vm.state())},
              {"pid:", vm.pid() ? absl::StrCat(vm.pid()) : "-"},
              {"accelerator:", vm.accelerator().empty() ? c.accelerator() : vm.accelerator()},
              {"cpu:", absl::StrCat(c.cpu_template().empty() ? "host" : c.cpu_template(), " (CPU template)")},
              {"memory:", absl::StrCat(c.memory_mib(), " MiB")},
              {"vcpus:", absl::StrCat(c.vcpus())},
              {"kernel:", c.kernel()},
              {"initrd:", c.initrd().empty() ? "-" : c.initrd()},
              {"cmdline:", c.cmdline()},
              {"xen version:", c.xen_version()},
              {"xenstore:", vm.xenstore_socket().empty() ? "-" : vm.xenstore_socket()},
              {"last end:", vm.end_reason().empty() ? "-" : vm.end_reason()}});
}

std::unique_ptr<grpc::ClientContext> Context(int seconds = 120) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (seconds > 0) context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return context;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg.rfind("--", 0) == 0 || arg == "-p") {
      std::string value;
      if (size_t eq = arg.find('='); eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
      } else if (std::find(std::begin(kValueOptions), std::end(kValueOptions), arg) != std::end(kValueOptions)) {
        if (i + 1 >= argc) return UsageError(absl::StrCat(arg, " needs a value"));
        value = argv[++i];
      }
      args.options[arg] = value;
      continue;
    }
    args.positional.push_back(arg);
  }
  if (args.positional.empty()) return UsageError("no verb given");
  const std::string verb = args.positional[0];
  const std::vector<std::string> rest(args.positional.begin() + 1, args.positional.end());
  const bool json = args.Has("--json");
  std::string socket = args.Has("--socket") ? args.options["--socket"]
                       : std::getenv("XENKVM_SOCKET") != nullptr ? std::getenv("XENKVM_SOCKET")
                                                                : kDefaultSocket;
  auto need = [&](size_t count, const char* what) -> bool {
    if (rest.size() < count) {
      UsageError(absl::StrCat(verb, " needs ", what));
      return false;
    }
    return true;
  };
  uint32_t timeout = 0;
  if (args.Has("--timeout") && !absl::SimpleAtoi(args.options["--timeout"], &timeout)) {
    return UsageError("--timeout: a number of seconds");
  }

  auto stub = VmService::NewStub(grpc::CreateChannel(absl::StrCat("unix:", socket), grpc::InsecureChannelCredentials()));
  v1::Vm vm;
  v1::VmRef ref;
  if (!rest.empty()) ref.set_name(rest[0]);

  if (verb == "create") {
    if (!need(1, "a config file")) return 2;
    absl::StatusOr<v1::VmConfig> config = xenkvm::api::ReadConfigFile(rest[0]);
    if (!config.ok()) {
      std::fprintf(stderr, "xenkvmctl: create: %s\n", std::string(config.status().message()).c_str());
      return 1;
    }
    v1::CreateVmRequest request;
    *request.mutable_config() = *config;
    request.set_start(!args.Has("-p"));
    if (grpc::Status s = stub->CreateVm(Context().get(), request, &vm); !s.ok()) return Fail(verb, s);
    if (json) {
      std::printf("%s\n", Json(vm).c_str());
    } else {
      std::printf("%s: %s%s\n", vm.config().name().c_str(), State(vm.state()).c_str(),
                  vm.pid() ? absl::StrCat(" (pid ", vm.pid(), ", ", vm.accelerator(), ")").c_str() : "");
    }
    return 0;
  }
  if (verb == "start" || verb == "pause" || verb == "unpause" || verb == "destroy" || verb == "info") {
    if (!need(1, "a VM name")) return 2;
    grpc::Status s;
    if (verb == "start") s = stub->StartVm(Context().get(), ref, &vm);
    if (verb == "pause") s = stub->PauseVm(Context().get(), ref, &vm);
    if (verb == "unpause") s = stub->ResumeVm(Context().get(), ref, &vm);
    if (verb == "destroy") s = stub->DestroyVm(Context().get(), ref, &vm);
    if (verb == "info") s = stub->GetVm(Context().get(), ref, &vm);
    if (!s.ok()) return Fail(verb, s);
    if (json) {
      std::printf("%s\n", Json(vm).c_str());
    } else if (verb == "info") {
      PrintVm(vm);
    } else {
      std::printf("%s: %s\n", vm.config().name().c_str(), State(vm.state()).c_str());
    }
    return 0;
  }
  if (verb == "shutdown") {
    if (!need(1, "a VM name")) return 2;
    v1::ShutdownVmRequest request;
    request.set_name(rest[0]);
    request.set_timeout_seconds(timeout);
    if (grpc::Status s = stub->ShutdownVm(Context(0).get(), request, &vm); !s.ok()) return Fail(verb, s);
    std::printf("%s: %s (%s)\n", vm.config().name().c_str(), State(vm.state()).c_str(), vm.end_reason().c_str());
    return 0;
  }
  if (verb == "delete") {
    if (!need(1, "a VM name")) return 2;
    v1::DeleteVmResponse response;
    if (grpc::Status s = stub->DeleteVm(Context().get(), ref, &response); !s.ok()) return Fail(verb, s);
    std::printf("%s: deleted\n", rest[0].c_str());
    return 0;
  }
  if (verb == "list") {
    v1::ListVmsResponse response;
    if (grpc::Status s = stub->ListVms(Context().get(), v1::ListVmsRequest(), &response); !s.ok()) return Fail(verb, s);
    if (json) {
      std::printf("%s\n", Json(response).c_str());
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {{"NAME", "STATE", "VCPUS", "MEMORY", "ACCEL", "PID"}};
    for (const v1::Vm& v : response.vms()) {
      rows.push_back({v.config().name(), State(v.state()), absl::StrCat(v.config().vcpus()),
                      absl::StrCat(v.config().memory_mib(), "M"), v.accelerator().empty() ? "-" : v.accelerator(),
                      v.pid() ? absl::StrCat(v.pid()) : "-"});
    }
    PrintTable(rows);
    return 0;
  }
  if (verb == "block-attach") {
    if (!need(2, "a VM name and an image path")) return 2;
    v1::AttachDiskRequest request;
    request.set_name(rest[0]);
    request.mutable_disk()->set_path(rest[1]);
    if (rest.size() > 2) request.mutable_disk()->set_vdev(rest[2]);
    request.mutable_disk()->set_read_only(args.Has("--ro"));
    v1::Device device;
    if (grpc::Status s = stub->AttachDisk(Context().get(), request, &device); !s.ok()) return Fail(verb, s);
    std::printf("%s: %s attached\n", rest[0].c_str(), device.id().c_str());
    return 0;
  }
  if (verb == "block-detach") {
    if (!need(2, "a VM name and a vdev")) return 2;
    v1::DetachDiskRequest request;
    request.set_name(rest[0]);
    request.set_vdev(rest[1]);
    request.set_force(args.Has("--force"));
    request.set_timeout_seconds(timeout);
    v1::DetachDiskResponse response;
    if (grpc::Status s = stub->DetachDisk(Context(0).get(), request, &response); !s.ok()) return Fail(verb, s);
    std::printf("%s: %s detached\n", rest[0].c_str(), rest[1].c_str());
    return 0;
  }
  if (verb == "block-list") {
    if (!need(1, "a VM name")) return 2;
    v1::ListDevicesResponse response;
    if (grpc::Status s = stub->ListDevices(Context().get(), ref, &response); !s.ok()) return Fail(verb, s);
    if (json) {
      std::printf("%s\n", Json(response).c_str());
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {{"KIND", "ID", "BACKEND", "FRONTEND", "IMAGE"}};
    for (const v1::Device& d : response.devices()) {
      rows.push_back({d.kind(), d.id(), d.backend_state().empty() ? "-" : d.backend_state(),
                      d.frontend_state().empty() ? "-" : d.frontend_state(), d.disk().path().empty() ? "-" : d.disk().path()});
    }
    PrintTable(rows);
    return 0;
  }
  if (verb == "evtchn") {
    if (!need(1, "a VM name")) return 2;
    v1::EventChannelList list;
    if (grpc::Status s = stub->ListEventChannels(Context().get(), ref, &list); !s.ok()) return Fail(verb, s);
    if (json) {
      std::printf("%s\n", Json(list).c_str());
      return 0;
    }
    // Like `xl debug-keys e`, plus the counters.
    std::vector<std::vector<std::string>> rows = {
        {"PORT", "VCPU", "TYPE", "REMOTE", "TARGET", "FLAGS", "SENDS", "DELIVERIES", "UPCALLS", "MASKED"}};
    for (const v1::EventChannel& p : list.ports()) {
      std::string remote = !p.remote().empty()      ? p.remote()
                           : p.type() == "unbound" ? absl::StrCat("dom", p.remote_domain())
                                                   : "-";
      std::string target = p.type() == "virq" ? absl::StrCat("virq ", p.target())
                           : p.type() == "interdomain" && p.remote() == "loopback" ? absl::StrCat("port ", p.target())
                                                                                   : "-";
      std::string flags = absl::StrCat(p.pending() ? "P" : "-", p.masked() ? "M" : "-");
      rows.push_back({absl::StrCat(p.port()), absl::StrCat(p.vcpu()), p.type(), remote, target, flags,
                      absl::StrCat(p.sends()), absl::StrCat(p.deliveries()), absl::StrCat(p.upcalls()),
                      absl::StrCat(p.masked_deliveries())});
    }
    PrintTable(rows);
    std::vector<std::string> calls;
    for (const v1::HypercallCount& c : list.hypercalls()) calls.push_back(absl::StrCat(c.name(), " ", c.count()));
    std::printf("hypercalls: %s; unknown %lu; refused from user space %lu\n",
                calls.empty() ? "none" : absl::StrJoin(calls, ", ").c_str(),
                static_cast<unsigned long>(list.unknown_hypercalls()),
                static_cast<unsigned long>(list.refused_user_hypercalls()));
    return 0;
  }
  if (verb == "console") {
    if (!need(1, "a VM name")) return 2;
    v1::StreamConsoleRequest request;
    request.set_name(rest[0]);
    request.set_replay(!args.Has("--no-replay"));
    request.set_no_follow(args.Has("--no-follow"));
    auto context = Context(0);
    auto reader = stub->StreamConsole(context.get(), request);
    v1::ConsoleChunk chunk;
    while (reader->Read(&chunk)) {
      std::fwrite(chunk.data().data(), 1, chunk.data().size(), stdout);
      std::fflush(stdout);
    }
    if (grpc::Status s = reader->Finish(); !s.ok()) return Fail(verb, s);
    return 0;
  }
  if (verb == "events") {
    v1::WatchEventsRequest request;
    if (!rest.empty()) request.set_name(rest[0]);
    auto context = Context(0);
    auto reader = stub->WatchEvents(context.get(), request);
    v1::VmEvent event;
    while (reader->Read(&event)) {
      if (json) {
        std::string line;
        google::protobuf::util::JsonPrintOptions options;
        options.preserve_proto_field_names = true;
        (void)google::protobuf::util::MessageToJsonString(event, &line, options);
        std::printf("%s\n", line.c_str());
      } else {
        std::printf("%s %s %s\n", event.name().c_str(), v1::VmEvent::Kind_Name(event.kind()).c_str(),
                    event.detail().c_str());
      }
      std::fflush(stdout);
    }
    if (grpc::Status s = reader->Finish(); !s.ok()) return Fail(verb, s);
    return 0;
  }
  return UsageError(absl::StrCat("unknown verb \"", verb, "\""));
}
