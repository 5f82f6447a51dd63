// xenkvmctl: xenkvm's command line, with verbs modelled on Xen's xl, speaking xenkvmd's VmService.
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "api/config.h"
#include "CLI/CLI.hpp"
#include "components/base/version.h"
#include "components/net/mac_address.h"
#include "components/xenbus/vif_spec.h"
#include "nlohmann/json.hpp"
#include "proto/xenkvm/v1/vm.grpc.pb.h"

namespace {

using xenkvm::v1::VmService;
namespace v1 = xenkvm::v1;

constexpr char kDefaultSocket[] = "/run/xenkvm/xenkvmd.sock";

constexpr char kDescription[] =
    "xenkvm's command line, with verbs after Xen's xl, speaking to xenkvmd (socket: --socket, else\n"
    "$XENKVM_SOCKET, else /run/xenkvm/xenkvmd.sock). --json prints the read verbs' results as JSON.\n"
    "Exit status 0 on success, 1 with a one-line reason on failure, 2 on bad usage.";

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

// A message as JSON with its proto field names, every field present, 64-bit integers as numbers
// (protobuf's own printer quotes them, as proto3's JSON mapping asks), enums by name.
nlohmann::json ToJson(const google::protobuf::Message& message);

nlohmann::json FieldValue(const google::protobuf::Message& message, const google::protobuf::FieldDescriptor* field,
                          int index) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = message.GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: return repeated ? r->GetRepeatedInt32(message, field, index) : r->GetInt32(message, field);
    case FieldDescriptor::CPPTYPE_INT64: return repeated ? r->GetRepeatedInt64(message, field, index) : r->GetInt64(message, field);
    case FieldDescriptor::CPPTYPE_UINT32: return repeated ? r->GetRepeatedUInt32(message, field, index) : r->GetUInt32(message, field);
    case FieldDescriptor::CPPTYPE_UINT64: return repeated ? r->GetRepeatedUInt64(message, field, index) : r->GetUInt64(message, field);
    case FieldDescriptor::CPPTYPE_DOUBLE: return repeated ? r->GetRepeatedDouble(message, field, index) : r->GetDouble(message, field);
    case FieldDescriptor::CPPTYPE_FLOAT: return repeated ? r->GetRepeatedFloat(message, field, index) : r->GetFloat(message, field);
    case FieldDescriptor::CPPTYPE_BOOL: return repeated ? r->GetRepeatedBool(message, field, index) : r->GetBool(message, field);
    case FieldDescriptor::CPPTYPE_STRING: return repeated ? r->GetRepeatedString(message, field, index) : r->GetString(message, field);
    case FieldDescriptor::CPPTYPE_ENUM:
      return (repeated ? r->GetRepeatedEnum(message, field, index) : r->GetEnum(message, field))->name();
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return ToJson(repeated ? r->GetRepeatedMessage(message, field, index) : r->GetMessage(message, field));
  }
  return nullptr;
}

nlohmann::json ToJson(const google::protobuf::Message& message) {
  nlohmann::json object = nlohmann::json::object();
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = descriptor->field(i);
    if (!field->is_repeated()) {
      object[field->name()] = FieldValue(message, field, 0);
      continue;
    }
    nlohmann::json list = nlohmann::json::array();
    for (int n = 0; n < message.GetReflection()->FieldSize(message, field); ++n) list.push_back(FieldValue(message, field, n));
    object[field->name()] = std::move(list);
  }
  return object;
}

std::string Json(const google::protobuf::Message& message) { return ToJson(message).dump(2); }

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

// `memory`: what a running Xen guest holds now (its balloon), if known.
void PrintVm(const v1::Vm& vm, const std::optional<v1::MemoryStatus>& memory) {
  const v1::VmConfig& c = vm.config();
  std::string memory_line = absl::StrCat(c.memory_mib(), " MiB", c.huge_pages() == "2M" ? " on 2 MiB huge pages" : "");
  if (memory) {
    absl::StrAppend(&memory_line, " (the guest holds ", memory->current_kib(), " KiB; target ", memory->target_kib(),
                    " KiB)");
  }
  PrintTable({{"name:", c.name()},
              {"state:", State(vm.state())},
              {"pid:", vm.pid() ? absl::StrCat(vm.pid()) : "-"},
              {"accelerator:", vm.accelerator().empty() ? c.accelerator() : vm.accelerator()},
              {"cpu:", absl::StrCat(c.cpu_template().empty() ? "host" : c.cpu_template(), " (CPU template)")},
              {"memory:", memory_line},
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

// What the verbs share: the connection and the output mode.
struct Session {
  std::unique_ptr<VmService::Stub> stub;
  bool json = false;
};

int PrintVmResult(const Session& session, const std::string& verb, const grpc::Status& status, const v1::Vm& vm) {
  if (!status.ok()) return Fail(verb, status);
  if (session.json) {
    std::printf("%s\n", Json(vm).c_str());
  } else if (verb == "info") {
    std::optional<v1::MemoryStatus> memory;
    if (vm.state() == v1::VM_STATE_RUNNING || vm.state() == v1::VM_STATE_PAUSED) {
      v1::VmRef ref;
      ref.set_name(vm.config().name());
      v1::MemoryStatus status;
      if (session.stub->GetMemory(Context().get(), ref, &status).ok()) memory = status;
    }
    PrintVm(vm, memory);
  } else {
    std::printf("%s: %s\n", vm.config().name().c_str(), State(vm.state()).c_str());
  }
  return 0;
}

int StreamConsole(Session& session, const std::string& name, bool replay, bool follow) {
  v1::StreamConsoleRequest request;
  request.set_name(name);
  request.set_replay(replay);
  request.set_no_follow(!follow);
  auto context = Context(0);
  auto reader = session.stub->StreamConsole(context.get(), request);
  v1::ConsoleChunk chunk;
  while (reader->Read(&chunk)) {
    std::fwrite(chunk.data().data(), 1, chunk.data().size(), stdout);
    std::fflush(stdout);
  }
  if (grpc::Status s = reader->Finish(); !s.ok()) return Fail("console", s);
  return 0;
}

// The terminal in raw mode while the interactive console runs (keys go to the guest as typed),
// restored when it ends.
class RawTerminal {
 public:
  RawTerminal() {
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    cfmakeraw(&raw);
    raw.c_oflag |= OPOST;  // keep \n -> \r\n on output
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

constexpr char kEscapeKey = 0x1d;  // Ctrl-], as xl console and telnet

// `xl console`: what is typed goes to the guest (Ctrl-] on a terminal leaves), its output comes
// back until the VM's run ends. Input that ends (a pipe's EOF) leaves the output running.
int InteractiveConsole(Session& session, const std::string& name, bool replay) {
  grpc::ClientContext context;
  auto stream = session.stub->Console(&context);
  v1::ConsoleInput first;
  first.set_name(name);
  first.set_replay(replay);
  if (!stream->Write(first)) return Fail("console", stream->Finish());
  const bool terminal = isatty(STDIN_FILENO);
  if (terminal) std::fprintf(stderr, "xenkvmctl: console of %s (Ctrl-] leaves)\r\n", name.c_str());
  RawTerminal raw;
  std::atomic<bool> done{false};
  std::atomic<bool> left{false};
  std::thread keys([&] {
    char buffer[256];
    while (!done.load()) {
      pollfd input{STDIN_FILENO, POLLIN, 0};
      if (poll(&input, 1, 100) <= 0) continue;
      const ssize_t n = read(STDIN_FILENO, buffer, sizeof buffer);
      if (n <= 0) {
        stream->WritesDone();
        return;
      }
      std::string data(buffer, static_cast<size_t>(n));
      if (terminal && data.find(kEscapeKey) != std::string::npos) {
        data.resize(data.find(kEscapeKey));
        left.store(true);
      }
      v1::ConsoleInput message;
      message.set_data(data);
      if (!data.empty() && !stream->Write(message)) return;
      if (left.load()) {
        context.TryCancel();
        return;
      }
    }
  });
  v1::ConsoleChunk chunk;
  while (stream->Read(&chunk)) {
    std::fwrite(chunk.data().data(), 1, chunk.data().size(), stdout);
    std::fflush(stdout);
  }
  done.store(true);
  keys.join();
  grpc::Status status = stream->Finish();
  if (left.load() || status.ok()) return 0;
  return Fail("console", status);
}

int Create(Session& session, const std::string& file, bool paused, bool console) {
  absl::StatusOr<v1::VmConfig> config = xenkvm::api::ReadConfigFile(file);
  if (!config.ok()) {
    std::fprintf(stderr, "xenkvmctl: create: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  v1::CreateVmRequest request;
  *request.mutable_config() = *config;
  request.set_start(!paused);
  v1::Vm vm;
  if (grpc::Status s = session.stub->CreateVm(Context().get(), request, &vm); !s.ok()) return Fail("create", s);
  if (session.json) {
    std::printf("%s\n", Json(vm).c_str());
  } else {
    std::printf("%s: %s%s\n", vm.config().name().c_str(), State(vm.state()).c_str(),
                vm.pid() ? absl::StrCat(" (pid ", vm.pid(), ", ", vm.accelerator(), ")").c_str() : "");
  }
  std::fflush(stdout);
  if (!console) return 0;
  return isatty(STDIN_FILENO) ? InteractiveConsole(session, vm.config().name(), true)
                              : StreamConsole(session, vm.config().name(), true, true);
}

int List(Session& session, bool long_form) {
  v1::ListVmsResponse response;
  if (grpc::Status s = session.stub->ListVms(Context().get(), v1::ListVmsRequest(), &response); !s.ok()) {
    return Fail("list", s);
  }
  if (session.json || long_form) {  // xl list -l: every domain's full description, as JSON
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

// xentop's view: each VM's state, CPU (seconds, and percent of one CPU since the last sample),
// memory, vCPUs and disk traffic, every `delay` seconds, `iterations` times (0: until interrupted).
int Top(Session& session, double delay, uint32_t iterations) {
  std::map<std::string, std::pair<double, absl::Time>> last;  // cpu seconds and when, per VM
  for (uint32_t round = 0; iterations == 0 || round < iterations; ++round) {
    if (round > 0) absl::SleepFor(absl::Seconds(delay));
    v1::ListVmsResponse response;
    if (grpc::Status s = session.stub->ListVms(Context().get(), v1::ListVmsRequest(), &response); !s.ok()) {
      return Fail("top", s);
    }
    const absl::Time now = absl::Now();
    std::vector<std::vector<std::string>> rows = {
        {"NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(M)", "RSS(M)", "VCPUS", "DISK_RD(M)", "DISK_WR(M)", "DISK_REQ"}};
    for (const v1::Vm& vm : response.vms()) {
      const std::string& name = vm.config().name();
      std::string percent = "-", read = "-", written = "-", requests = "-";
      if (vm.pid() != 0) {
        auto previous = last.find(name);
        const double since = previous != last.end()
                                 ? absl::ToDoubleSeconds(now - previous->second.second)
                                 : absl::ToDoubleSeconds(now - absl::FromUnixMillis(vm.started_unix_ms()));
        const double used = vm.cpu_seconds() - (previous != last.end() ? previous->second.first : 0);
        if (since > 0) percent = absl::StrFormat("%.1f", 100 * used / since);
        last[name] = {vm.cpu_seconds(), now};
        v1::VmRef ref;
        ref.set_name(name);
        v1::ListDevicesResponse devices;
        if (session.stub->ListDevices(Context(5).get(), ref, &devices).ok()) {
          uint64_t bytes_read = 0, bytes_written = 0, count = 0;
          for (const v1::Device& device : devices.devices()) {
            bytes_read += device.statistics().bytes_read();
            bytes_written += device.statistics().bytes_written();
            count += device.statistics().requests();
          }
          read = absl::StrFormat("%.1f", bytes_read / 1048576.0);
          written = absl::StrFormat("%.1f", bytes_written / 1048576.0);
          requests = absl::StrCat(count);
        }
      }
      rows.push_back({name, State(vm.state()), vm.pid() ? absl::StrFormat("%.2f", vm.cpu_seconds()) : "-", percent,
                      absl::StrCat(vm.config().memory_mib()),
                      vm.pid() ? absl::StrFormat("%.1f", vm.rss_bytes() / 1048576.0) : "-",
                      absl::StrCat(vm.config().vcpus()), read, written, requests});
    }
    if (round > 0) std::printf("\n");
    PrintTable(rows);
    std::fflush(stdout);
  }
  return 0;
}

int Shutdown(Session& session, const std::vector<std::string>& names, bool all, uint32_t timeout,
             const std::string& reason) {
  const std::string verb = reason == "reboot" ? "reboot" : "shutdown";
  std::vector<std::string> targets = names;
  if (all) {
    v1::ListVmsResponse response;
    if (grpc::Status s = session.stub->ListVms(Context().get(), v1::ListVmsRequest(), &response); !s.ok()) {
      return Fail(verb, s);
    }
    for (const v1::Vm& v : response.vms()) {
      if (v.state() == v1::VM_STATE_RUNNING || v.state() == v1::VM_STATE_PAUSED) targets.push_back(v.config().name());
    }
  }
  int result = 0;
  for (const std::string& name : targets) {
    v1::ShutdownVmRequest request;
    request.set_name(name);
    request.set_timeout_seconds(timeout);
    request.set_reason(reason);
    v1::Vm vm;
    if (grpc::Status s = session.stub->ShutdownVm(Context(0).get(), request, &vm); !s.ok()) {
      result = Fail(verb, s);
      continue;
    }
    const bool restarted = vm.state() == v1::VM_STATE_RUNNING;
    std::printf("%s: %s (%s)\n", vm.config().name().c_str(), State(vm.state()).c_str(),
                restarted ? "restarted in a fresh VMM" : vm.end_reason().c_str());
  }
  return result;
}

int Delete(Session& session, const std::string& name) {
  v1::VmRef ref;
  ref.set_name(name);
  v1::DeleteVmResponse response;
  if (grpc::Status s = session.stub->DeleteVm(Context().get(), ref, &response); !s.ok()) return Fail("delete", s);
  std::printf("%s: deleted\n", name.c_str());
  return 0;
}

int BlockAttach(Session& session, const std::string& name, const std::string& path, const std::string& vdev,
                bool read_only, const std::string& cache) {
  v1::AttachDiskRequest request;
  request.set_name(name);
  request.mutable_disk()->set_path(path);
  request.mutable_disk()->set_vdev(vdev);
  request.mutable_disk()->set_read_only(read_only);
  request.mutable_disk()->set_cache(cache);
  v1::Device device;
  if (grpc::Status s = session.stub->AttachDisk(Context().get(), request, &device); !s.ok()) return Fail("block-attach", s);
  std::printf("%s: %s attached\n", name.c_str(), device.id().c_str());
  return 0;
}

int BlockDetach(Session& session, const std::string& name, const std::string& vdev, bool force, uint32_t timeout) {
  v1::DetachDiskRequest request;
  request.set_name(name);
  request.set_vdev(vdev);
  request.set_force(force);
  request.set_timeout_seconds(timeout);
  v1::DetachDiskResponse response;
  if (grpc::Status s = session.stub->DetachDisk(Context(0).get(), request, &response); !s.ok()) {
    return Fail("block-detach", s);
  }
  std::printf("%s: %s detached\n", name.c_str(), vdev.c_str());
  return 0;
}

int BlockList(Session& session, const std::string& name) {
  v1::VmRef ref;
  ref.set_name(name);
  v1::ListDevicesResponse response;
  if (grpc::Status s = session.stub->ListDevices(Context().get(), ref, &response); !s.ok()) return Fail("block-list", s);
  if (session.json) {
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

// xl network-attach's arguments: key=value items (mac, bridge, vifname, mtu), through the one vif parser.
int NetworkAttach(Session& session, const std::string& name, const std::vector<std::string>& items) {
  absl::StatusOr<xenkvm::xenbus::XenNetConfig> vif = xenkvm::xenbus::ParseVifSpec(absl::StrJoin(items, ","), 0);
  if (!vif.ok()) {
    std::fprintf(stderr, "xenkvmctl network-attach: %s\n", std::string(vif.status().message()).c_str());
    return 1;
  }
  v1::AttachNetworkRequest request;
  request.set_name(name);
  request.mutable_network()->set_mac(xenkvm::net::FormatMac(vif->mac));
  request.mutable_network()->set_bridge(vif->bridge);
  request.mutable_network()->set_tap(vif->tap);
  request.mutable_network()->set_mtu(vif->mtu);
  if (vif->tx_rate) request.mutable_network()->set_rate(xenkvm::xenbus::FormatVifRate(*vif->tx_rate));
  if (vif->rx_rate) request.mutable_network()->set_rx_rate(xenkvm::xenbus::FormatVifRate(*vif->rx_rate));
  v1::Device device;
  if (grpc::Status s = session.stub->AttachNetwork(Context().get(), request, &device); !s.ok()) {
    return Fail("network-attach", s);
  }
  std::printf("%s: vif%s attached (mac %s, tap %s)\n", name.c_str(), device.id().c_str(), device.network().mac().c_str(),
              device.network().tap().c_str());
  return 0;
}

int NetworkDetach(Session& session, const std::string& name, const std::string& device, bool force, uint32_t timeout) {
  v1::DetachNetworkRequest request;
  request.set_name(name);
  request.set_device(device);
  request.set_force(force);
  request.set_timeout_seconds(timeout);
  v1::DetachNetworkResponse response;
  if (grpc::Status s = session.stub->DetachNetwork(Context(0).get(), request, &response); !s.ok()) {
    return Fail("network-detach", s);
  }
  std::printf("%s: vif %s detached (%s)\n", name.c_str(), device.c_str(),
              response.forced() ? "forced: the guest did not let go in time" : "released by the guest");
  return 0;
}

// Like xl network-list, with the counters.
int NetworkList(Session& session, const std::string& name) {
  v1::VmRef ref;
  ref.set_name(name);
  v1::ListDevicesResponse response;
  if (grpc::Status s = session.stub->ListDevices(Context().get(), ref, &response); !s.ok()) return Fail("network-list", s);
  v1::ListDevicesResponse vifs;
  for (const v1::Device& d : response.devices()) {
    if (d.kind() == "xen-net") *vifs.add_devices() = d;
  }
  if (session.json) {
    std::printf("%s\n", Json(vifs).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {{"IDX", "MAC", "TAP", "BRIDGE", "BACKEND", "FRONTEND", "TX-PKTS",
                                                 "TX-BYTES", "RX-PKTS", "RX-BYTES", "DROPPED", "ERRORS"}};
  auto or_dash = [](const std::string& text) { return text.empty() ? std::string("-") : text; };
  for (const v1::Device& d : vifs.devices()) {
    const v1::NetworkStatistics& n = d.network_statistics();
    rows.push_back({d.id(), d.network().mac(), or_dash(d.network().tap()), or_dash(d.network().bridge()),
                    or_dash(d.backend_state()), or_dash(d.frontend_state()), absl::StrCat(n.tx_packets()),
                    absl::StrCat(n.tx_bytes()), absl::StrCat(n.rx_packets()), absl::StrCat(n.rx_bytes()),
                    absl::StrCat(n.tx_dropped() + n.rx_dropped()), absl::StrCat(n.tx_errors() + n.rx_errors())});
  }
  PrintTable(rows);
  return 0;
}

int EventChannels(Session& session, const std::string& name) {
  v1::VmRef ref;
  ref.set_name(name);
  v1::EventChannelList list;
  if (grpc::Status s = session.stub->ListEventChannels(Context().get(), ref, &list); !s.ok()) return Fail("evtchn", s);
  if (session.json) {
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

// xl's sizes: a number with an optional unit (b, k, m, g, t), MiB without one; in KiB.
std::optional<uint64_t> ParseMemoryKib(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  uint64_t number = 0;
  if (digits == 0 || text.size() - digits > 1 || !absl::SimpleAtoi(text.substr(0, digits), &number)) return std::nullopt;
  const char unit = digits < text.size() ? static_cast<char>(std::tolower(static_cast<unsigned char>(text[digits]))) : 'm';
  const int shift = unit == 'k' ? 0 : unit == 'm' ? 10 : unit == 'g' ? 20 : unit == 't' ? 30 : unit == 'b' ? -10 : -99;
  if (shift == -99) return std::nullopt;
  if (shift < 0) return number >> 10;
  if (number > (UINT64_MAX >> shift)) return std::nullopt;
  return number << shift;
}

int MemSet(Session& session, const std::string& name, const std::string& size) {
  std::optional<uint64_t> kib = ParseMemoryKib(size);
  if (!kib) {
    std::fprintf(stderr, "xenkvmctl: mem-set: \"%s\" is not a size (a number of MiB, or with a unit: 512m, 2g, 524288k)\n",
                 size.c_str());
    return 2;
  }
  v1::SetMemoryTargetRequest request;
  request.set_name(name);
  request.set_target_kib(*kib);
  v1::MemoryStatus memory;
  if (grpc::Status s = session.stub->SetMemoryTarget(Context().get(), request, &memory); !s.ok()) return Fail("mem-set", s);
  if (session.json) {
    std::printf("%s\n", Json(memory).c_str());
    return 0;
  }
  std::printf("%s: memory target %lu KiB; the guest holds %lu KiB of %lu KiB (its balloon driver moves it there)\n",
              name.c_str(), static_cast<unsigned long>(memory.target_kib()),
              static_cast<unsigned long>(memory.current_kib()), static_cast<unsigned long>(memory.max_kib()));
  return 0;
}

int Dmesg(Session& session, const std::string& name, bool clear) {
  v1::ReadHypervisorLogRequest request;
  request.set_name(name);
  request.set_clear(clear);
  v1::HypervisorLog log;
  if (grpc::Status s = session.stub->ReadHypervisorLog(Context().get(), request, &log); !s.ok()) return Fail("dmesg", s);
  if (session.json) {
    std::printf("%s\n", Json(log).c_str());
    return 0;
  }
  if (log.dropped_bytes() > 0) {
    std::fprintf(stderr, "(%lu older bytes no longer kept)\n", static_cast<unsigned long>(log.dropped_bytes()));
  }
  std::fwrite(log.text().data(), 1, log.text().size(), stdout);
  return 0;
}

int Events(Session& session, const std::string& name, std::optional<uint64_t> since) {
  v1::WatchEventsRequest request;
  request.set_name(name);
  if (since) request.set_since(*since);
  auto context = Context(0);
  auto reader = session.stub->WatchEvents(context.get(), request);
  v1::VmEvent event;
  while (reader->Read(&event)) {
    if (session.json) {
      std::printf("%s\n", ToJson(event).dump().c_str());
    } else {
      std::printf("#%lu %s %s %s\n", static_cast<unsigned long>(event.sequence()), event.name().c_str(),
                  v1::VmEvent::Kind_Name(event.kind()).c_str(), event.detail().c_str());
    }
    std::fflush(stdout);
  }
  if (grpc::Status s = reader->Finish(); !s.ok()) return Fail("events", s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(kDescription, "xenkvmctl");
  app.set_version_flag("--version", std::string("xenkvmctl ") + xenkvm::base::kVersion);
  app.require_subcommand(1);
  app.fallthrough();  // --socket and --json also after the verb
  std::string socket = kDefaultSocket;
  Session session;
  app.add_option("--socket", socket, "xenkvmd's socket")->envname("XENKVM_SOCKET")->capture_default_str();
  app.add_flag("--json", session.json, "print the read verbs' results as JSON");
  std::function<int()> action;
  auto verb = [&](const char* name, const char* help) { return app.add_subcommand(name, help); };

  std::string name, path, vdev, cache;
  std::vector<std::string> names;
  bool flag_a = false, flag_b = false;
  uint32_t timeout = 0;

  CLI::App* create = verb("create", "define a VM from a config file (JSON VmConfig or xl.cfg) and start it");
  create->add_option("FILE", path, "the config file")->required();
  create->add_flag("-p", flag_a, "define it only, paused (start it with `start`)");
  create->add_flag("-c", flag_b, "then show its console, as xl create -c");
  create->callback([&] { action = [&] { return Create(session, path, flag_a, flag_b); }; });

  for (const char* simple : {"start", "info", "pause", "unpause", "destroy"}) {
    const char* help = std::string(simple) == "start"   ? "start a defined or ended VM"
                       : std::string(simple) == "info"  ? "one VM in detail"
                       : std::string(simple) == "pause" ? "stop the vCPUs (a paused VM stays paused)"
                       : std::string(simple) == "unpause" ? "resume the vCPUs"
                                                          : "end the VM at once";
    CLI::App* sub = verb(simple, help);
    sub->add_option("NAME", name, "the VM")->required();
    sub->callback([&, simple] {
      action = [&, simple] {
        v1::VmRef ref;
        ref.set_name(name);
        v1::Vm vm;
        const std::string v = simple;
        grpc::Status s = v == "start"     ? session.stub->StartVm(Context().get(), ref, &vm)
                         : v == "info"    ? session.stub->GetVm(Context().get(), ref, &vm)
                         : v == "pause"   ? session.stub->PauseVm(Context().get(), ref, &vm)
                         : v == "unpause" ? session.stub->ResumeVm(Context().get(), ref, &vm)
                                          : session.stub->DestroyVm(Context().get(), ref, &vm);
        return PrintVmResult(session, v, s, vm);
      };
    });
  }

  CLI::App* list = verb("list", "every VM: name, state, vCPUs, memory, accelerator, pid");
  list->add_flag("-l,--long", flag_a, "every VM's full description (JSON), as xl list -l");
  list->callback([&] { action = [&] { return List(session, flag_a); }; });

  // shutdown and reboot: xl's verbs, one request each (XenStore control/shutdown).
  for (const char* reason : {"poweroff", "reboot"}) {
    const bool reboot = std::string(reason) == "reboot";
    CLI::App* sub = reboot ? verb("reboot", "ask the guest to reboot (XenStore control/shutdown); on_reboot restarts it")
                           : verb("shutdown", "ask the guest to power off (XenStore control/shutdown, as xl) and wait for it");
    sub->add_option("NAME", names, "the VMs");
    sub->add_flag("-a,--all", flag_a, "every running VM");
    if (!reboot) sub->add_flag("-w,--wait", flag_b, "wait for the guest to power off (always done)");
    sub->add_option("--timeout", timeout, "destroy it if it has not done so after S seconds (default 30)");
    sub->callback([&, reason] {
      action = [&, reason] {
        if (names.empty() && !flag_a) {
          std::fprintf(stderr, "xenkvmctl: %s: give a VM name, or -a for every running VM\n",
                       std::string(reason) == "reboot" ? "reboot" : "shutdown");
          return 2;
        }
        return Shutdown(session, names, flag_a, timeout, reason);
      };
    });
  }

  CLI::App* top = verb("top", "each VM's CPU, memory and disk traffic, refreshed (as xentop)");
  double delay = 3;
  uint32_t iterations = 0;
  top->add_option("-d,--delay", delay, "seconds between updates")->capture_default_str()->check(CLI::PositiveNumber);
  top->add_option("-i,--iterations", iterations, "updates before it stops (default: until interrupted)");
  top->callback([&] { action = [&] { return Top(session, delay, iterations); }; });

  CLI::App* remove = verb("delete", "forget a VM that is not running");
  remove->add_option("NAME", name, "the VM")->required();
  remove->callback([&] { action = [&] { return Delete(session, name); }; });

  CLI::App* attach = verb("block-attach", "hot-plug a xen-disk (vdev: the next free xvdX when not given)");
  attach->add_option("NAME", name, "the VM")->required();
  attach->add_option("PATH", path, "the image (a regular file or a block device)")->required();
  attach->add_option("VDEV", vdev, "xvdX, hdX, sdX or a number");
  attach->add_flag("--ro", flag_a, "read-only");
  attach->add_option("--cache", cache, "writeback (the host's page cache; default) or none (O_DIRECT)")
      ->check(CLI::IsMember({"writeback", "none"}));
  attach->callback([&] { action = [&] { return BlockAttach(session, name, path, vdev, flag_a, cache); }; });

  CLI::App* detach = verb("block-detach", "hot-unplug a xen-disk (the guest lets go first)");
  detach->add_option("NAME", name, "the VM")->required();
  detach->add_option("VDEV", vdev, "the disk")->required();
  detach->add_flag("--force", flag_a, "remove it even if the guest does not let go");
  detach->add_option("--timeout", timeout, "seconds to wait for the guest");
  detach->callback([&] { action = [&] { return BlockDetach(session, name, vdev, flag_a, timeout); }; });

  CLI::App* devices = verb("block-list", "the VM's devices");
  devices->add_option("NAME", name, "the VM")->required();
  devices->callback([&] { action = [&] { return BlockList(session, name); }; });

  std::vector<std::string> vif_items;
  CLI::App* net_attach = verb("network-attach", "hot-plug a xen-net device on a tap (xl's vif keys)");
  net_attach->add_option("NAME", name, "the VM")->required();
  net_attach->add_option("KEY=VALUE", vif_items,
                         "mac=MAC (default: 00:16:3e plus random bytes), bridge=BRIDGE, vifname=TAP, mtu=N, "
                         "rate=RATE/s[@INTERVAL] (what the guest sends), rx-rate=... (what it receives)");
  net_attach->callback([&] { action = [&] { return NetworkAttach(session, name, vif_items); }; });

  std::string vif;
  CLI::App* net_detach = verb("network-detach", "hot-unplug a xen-net device (the guest lets go first)");
  net_detach->add_option("NAME", name, "the VM")->required();
  net_detach->add_option("DEVICE", vif, "the vif's index or MAC")->required();
  net_detach->add_flag("--force", flag_a, "remove it even if the guest does not let go");
  net_detach->add_option("--timeout", timeout, "seconds to wait for the guest");
  net_detach->callback([&] { action = [&] { return NetworkDetach(session, name, vif, flag_a, timeout); }; });

  CLI::App* net_list = verb("network-list", "the VM's vifs with their XenBus states and counters");
  net_list->add_option("NAME", name, "the VM")->required();
  net_list->callback([&] { action = [&] { return NetworkList(session, name); }; });

  CLI::App* console = verb("console", "the guest console (replayed, then followed)");
  console->add_option("NAME", name, "the VM")->required();
  console->add_flag("--no-follow", flag_a, "stop at the end of what was written so far");
  console->add_flag("--no-replay", flag_b, "only what is written from now on");
  bool forward_input = false;
  console->add_flag("--input", forward_input,
                    "send standard input to the guest even when it is not a terminal (it is, from a terminal)");
  console->callback([&] {
    action = [&] {
      if (!flag_a && (forward_input || isatty(STDIN_FILENO))) return InteractiveConsole(session, name, !flag_b);
      return StreamConsole(session, name, !flag_b, !flag_a);
    };
  });

  CLI::App* evtchn = verb("evtchn", "open event channels with their counters, and hypercall counts");
  evtchn->add_option("NAME", name, "the VM")->required();
  evtchn->callback([&] { action = [&] { return EventChannels(session, name); }; });

  CLI::App* mem_set = verb("mem-set", "ask the guest's balloon driver to hold SIZE (as xl mem-set)");
  std::string size;
  mem_set->add_option("NAME", name, "the VM")->required();
  mem_set->add_option("SIZE", size, "MiB, or with a unit: 512m, 2g, 524288k")->required();
  mem_set->callback([&] { action = [&] { return MemSet(session, name, size); }; });

  CLI::App* dmesg = verb("dmesg", "the VM's hypervisor log: what the guest wrote with console_io (as xl dmesg)");
  dmesg->add_option("NAME", name, "the VM")->required();
  dmesg->add_flag("-c,--clear", flag_a, "empty it after reading");
  dmesg->callback([&] { action = [&] { return Dmesg(session, name, flag_a); }; });

  CLI::App* events = verb("events", "lifecycle and device events as they happen, each with its sequence number");
  events->add_option("NAME", name, "only this VM's");
  std::optional<uint64_t> since;
  events->add_option("--since", since, "first the kept events after this sequence number (resume)");
  events->callback([&] { action = [&] { return Events(session, name, since); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);  // help and version: 0; bad usage: the reason on stderr
    return code == 0 ? 0 : 2;
  }
  session.stub = VmService::NewStub(grpc::CreateChannel(absl::StrCat("unix:", socket), grpc::InsecureChannelCredentials()));
  return action ? action() : 2;
}
