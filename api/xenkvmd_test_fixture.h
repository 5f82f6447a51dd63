// xenkvmd end to end: the daemon runs as a process with its own socket and state directory; the
// tests drive it with xenkvmctl (the real CLI) and with a gRPC stub, with emu guests. This is the
// fixture of xenkvmd_test (one daemon for the suite) and the helpers of xenkvmd_own_daemon_test.
#ifndef XENKVM_API_XENKVMD_TEST_FIXTURE_H_
#define XENKVM_API_XENKVMD_TEST_FIXTURE_H_

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/mount.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/xenkvm/v1/vm.grpc.pb.h"
#include "tests/testing/subprocess.h"

namespace xenkvm::api {

using testing::ProcessResult;
using testing::Runfile;

// An image whose sector N begins with "xenkvm disk sector N".
inline std::string MakeDiskImage(const std::string& path, int sectors) {
  std::string bytes(static_cast<size_t>(sectors) * 512, '\0');
  for (int n = 0; n < sectors; ++n) {
    const std::string text = absl::StrCat("xenkvm disk sector ", n);
    bytes.replace(static_cast<size_t>(n) * 512, text.size(), text);
  }
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

class XenkvmdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Unix socket paths must stay short: not under TEST_TMPDIR.
    char dir[] = "/tmp/xenkvmd-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = new std::string(dir);
    socket_ = new std::string(*dir_ + "/d.sock");
    daemon_ = testing::StartProcess({Runfile("api/xenkvmd"), "--socket", *socket_, "--state-dir", *dir_ + "/state",
                                     "--vmm", Runfile("vmm/xenkvm-vmm"), "--max-vms", "8"},
                                    *dir_ + "/daemon.log");
    ASSERT_GT(daemon_, 0);
    for (int i = 0; i < 100 && access(socket_->c_str(), F_OK) != 0; ++i) absl::SleepFor(absl::Milliseconds(50));
    ASSERT_EQ(access(socket_->c_str(), F_OK), 0) << "xenkvmd did not create its socket";
  }
  static void TearDownTestSuite() {
    kill(daemon_, SIGTERM);
    int status = 0;
    waitpid(daemon_, &status, 0);
    std::error_code error;
    std::filesystem::remove_all(*dir_, error);
  }

  static ProcessResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {Runfile("tools/xenkvmctl"), "--socket", *socket_});
    return testing::RunProcess(args, absl::Seconds(60));
  }
  static std::unique_ptr<v1::VmService::Stub> Stub() {
    return v1::VmService::NewStub(grpc::CreateChannel(absl::StrCat("unix:", *socket_), grpc::InsecureChannelCredentials()));
  }
  static std::string WriteConfig(const std::string& name, const std::string& json) {
    std::string path = absl::StrCat(*dir_, "/", name);
    std::ofstream(path) << json;
    return path;
  }
  static std::string TickerConfig(const std::string& name, const std::string& cmdline = "") {
    return WriteConfig(name + ".json", absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")",
                                                    Runfile("tests/guests/xen_ticker.elf"), R"(", "accelerator": "emu", "cmdline": ")",
                                                    cmdline, R"("})"));
  }
  // Creates and starts a VM running the XenStore guest; true once it waits for control/shutdown.
  static bool StartXenStoreGuest(const std::string& name) {
    const std::string config = WriteConfig(name + ".json", absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")",
                                                                        Runfile("tests/guests/xen_store.elf"),
                                                                        R"(", "accelerator": "emu"})"));
    if (Ctl({"create", config}).status != 0) return false;
    for (int i = 0; i < 200; ++i) {
      if (Ctl({"console", name, "--no-follow"}).out.find("ready for control/shutdown") != std::string::npos) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }
  static v1::Vm Get(const std::string& name) {
    grpc::ClientContext context;
    v1::VmRef ref;
    ref.set_name(name);
    v1::Vm vm;
    EXPECT_TRUE(Stub()->GetVm(&context, ref, &vm).ok());
    return vm;
  }
  static v1::EventChannelList EventChannels(const std::string& name) {
    grpc::ClientContext context;
    v1::VmRef ref;
    ref.set_name(name);
    v1::EventChannelList list;
    grpc::Status status = Stub()->ListEventChannels(&context, ref, &list);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return list;
  }
  static uint64_t TimerDeliveries(const std::string& name) {
    const v1::EventChannelList list = EventChannels(name);
    for (const v1::EventChannel& port : list.ports()) {
      if (port.type() == "virq" && port.target() == 0) return port.deliveries();
    }
    return 0;
  }

  inline static std::string* dir_ = nullptr;
  inline static std::string* socket_ = nullptr;
  inline static pid_t daemon_ = 0;
};

// A daemon of its own, on its own state directory and socket, for the tests that stop daemons.
class OwnDaemon {
 public:
  explicit OwnDaemon(std::string dir) : dir_(std::move(dir)), socket_(dir_ + "/d.sock") {}
  // Starts xenkvmd (extra flags appended); false if it does not create its socket.
  bool Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {Runfile("api/xenkvmd"), "--socket", socket_, "--state-dir", dir_ + "/state",
                                     "--vmm", Runfile("vmm/xenkvm-vmm")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid_ = testing::StartProcess(argv, dir_ + "/daemon.log");
    for (int i = 0; i < 100; ++i) {
      if (access(socket_.c_str(), F_OK) == 0 && Ctl({"list"}).status == 0) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }
  ProcessResult Ctl(std::vector<std::string> args) const {
    args.insert(args.begin(), {Runfile("tools/xenkvmctl"), "--socket", socket_});
    return testing::RunProcess(args, absl::Seconds(60));
  }
  // The `info` line "KEY: VALUE" of a VM, VALUE trimmed.
  std::string Info(const std::string& name, const std::string& key) const {
    for (absl::string_view line : absl::StrSplit(Ctl({"info", name}).out, '\n')) {
      if (absl::StartsWith(absl::StripLeadingAsciiWhitespace(line), key + ":")) {
        return std::string(absl::StripAsciiWhitespace(line.substr(line.find(':') + 1)));
      }
    }
    return "";
  }
  int Stop(int signal) {
    kill(pid_, signal);
    int status = 0;
    waitpid(pid_, &status, 0);
    return status;
  }
  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }

 private:
  std::string dir_;
  std::string socket_;
  pid_t pid_ = 0;
};

}  // namespace xenkvm::api

#endif  // XENKVM_API_XENKVMD_TEST_FIXTURE_H_
