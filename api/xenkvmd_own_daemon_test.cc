// xenkvmd end to end with daemons of their own: restarts, image directories, metrics, a full
// state disk, VMMs as another user (xenkvmd_test_fixture.h).
#include "api/xenkvmd_test_fixture.h"

#include <sys/stat.h>

namespace xenkvm::api {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A process that exists and is not a zombie (a VMM whose daemon died is reaped by init, later).
bool Alive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string text;
  if (!std::getline(stat, text)) return false;
  const size_t end = text.rfind(')');
  return end != std::string::npos && end + 2 < text.size() && text[end + 2] != 'Z';
}

std::string TickerJson(const std::string& name) {
  return absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")", Runfile("tests/guests/xen_ticker.elf"),
                      R"(", "accelerator": "emu"})");
}

bool ConsoleShows(const OwnDaemon& daemon, const std::string& name, const std::string& text) {
  for (int i = 0; i < 200; ++i) {
    if (daemon.Ctl({"console", name, "--no-follow"}).out.find(text) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

// kill -9 of the daemon: its VMs run on; a daemon started again on the state directory takes the
// live ones over (one VMM each, their consoles kept) and reports the one that died meanwhile.
// One daemon per state directory and per socket.
TEST(XenkvmdRestartTest, VmsOutliveTheDaemonAndAreTakenOver) {
  char dir[] = "/tmp/xkr-XXXXXX";  // short: the per-VM sockets live under it
  ASSERT_NE(mkdtemp(dir), nullptr);
  OwnDaemon daemon(dir);
  ASSERT_TRUE(daemon.Start());
  for (const char* name : {"survivor", "victim"}) {
    std::ofstream(daemon.dir() + "/" + name + ".json") << TickerJson(name);
    ASSERT_EQ(daemon.Ctl({"create", daemon.dir() + "/" + name + ".json"}).status, 0);
  }
  ASSERT_TRUE(ConsoleShows(daemon, "survivor", "tick 10"));
  const std::string survivor_pid = daemon.Info("survivor", "pid");
  const std::string victim_pid = daemon.Info("victim", "pid");
  ASSERT_FALSE(survivor_pid.empty());

  // A second daemon on the same state directory, or on the same socket, refuses to start.
  ProcessResult refused = testing::RunProcess({Runfile("api/xenkvmd"), "--socket", daemon.dir() + "/other.sock",
                                               "--state-dir", daemon.dir() + "/state", "--vmm", Runfile("vmm/xenkvm-vmm")},
                                              absl::Seconds(10));
  EXPECT_EQ(refused.status, 2);
  EXPECT_THAT(refused.err, HasSubstr("is in use by another xenkvmd (pid "));
  ProcessResult socket_taken = testing::RunProcess({Runfile("api/xenkvmd"), "--socket", daemon.socket(), "--state-dir",
                                                    daemon.dir() + "/state2", "--vmm", Runfile("vmm/xenkvm-vmm")},
                                                   absl::Seconds(10));
  EXPECT_EQ(socket_taken.status, 2);
  EXPECT_THAT(socket_taken.err, HasSubstr("another xenkvmd serves on"));
  EXPECT_EQ(daemon.Ctl({"list"}).status, 0);  // the first one still serves

  daemon.Stop(SIGKILL);
  absl::SleepFor(absl::Milliseconds(300));
  const pid_t survivor = std::stoi(survivor_pid);
  EXPECT_TRUE(Alive(survivor)) << "the VMM died with its daemon";
  kill(std::stoi(victim_pid), SIGKILL);  // dies while no daemon watches

  ASSERT_TRUE(daemon.Start());
  EXPECT_EQ(daemon.Info("survivor", "state"), "running");
  EXPECT_EQ(daemon.Info("survivor", "pid"), survivor_pid);  // taken over, not started again
  EXPECT_EQ(daemon.Info("victim", "state"), "crashed");
  EXPECT_THAT(daemon.Ctl({"info", "victim"}).out, HasSubstr("no xenkvmd watched it"));
  EXPECT_THAT(daemon.Ctl({"console", "survivor", "--no-follow"}).out, HasSubstr("ticker: VIRQ_TIMER"));  // kept
  EXPECT_THAT(daemon.Ctl({"start", "survivor"}).err, HasSubstr("is already running (FAILED_PRECONDITION)"));
  EXPECT_EQ(daemon.Ctl({"evtchn", "survivor"}).status, 0);  // its control channel, found again
  EXPECT_EQ(daemon.Ctl({"destroy", "survivor"}).status, 0);  // not the daemon's child: still ended
  EXPECT_EQ(daemon.Info("survivor", "state"), "shutdown");
  EXPECT_FALSE(Alive(survivor));

  // The end of a run survives a restart too; --keep-vms leaves running VMs running.
  daemon.Stop(SIGTERM);
  ASSERT_TRUE(daemon.Start({"--keep-vms"}));
  EXPECT_EQ(daemon.Info("victim", "state"), "crashed");
  ASSERT_EQ(daemon.Ctl({"start", "survivor"}).status, 0);
  const std::string kept_pid = daemon.Info("survivor", "pid");
  EXPECT_EQ(WEXITSTATUS(daemon.Stop(SIGTERM)), 0);
  EXPECT_TRUE(Alive(std::stoi(kept_pid))) << "--keep-vms: the VM must run on";
  ASSERT_TRUE(daemon.Start());
  EXPECT_EQ(daemon.Info("survivor", "pid"), kept_pid);
  daemon.Stop(SIGTERM);  // without --keep-vms: the VM is shut down with the daemon
  EXPECT_FALSE(Alive(std::stoi(kept_pid)));
  std::error_code error;
  std::filesystem::remove_all(dir, error);
}

// --image-dir confines kernels, initrds and disks (symlinks resolved), at create, start and attach.
TEST(XenkvmdImageDirTest, FilesOutsideTheImageDirectoriesAreRefused) {
  char dir[] = "/tmp/xki-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string allowed = absl::StrCat(dir, "/images");
  std::filesystem::create_directories(allowed);
  std::filesystem::copy_file(Runfile("tests/guests/xen_store.elf"), allowed + "/store.elf");
  std::filesystem::create_symlink(Runfile("tests/guests/xen_ticker.elf"), allowed + "/escape.elf");
  const std::string inside_disk = MakeDiskImage(allowed + "/disk.img", 64);
  const std::string outside_disk = MakeDiskImage(absl::StrCat(dir, "/outside.img"), 64);
  OwnDaemon daemon(dir);
  ASSERT_TRUE(daemon.Start({"--image-dir", allowed}));
  auto create = [&](const std::string& name, const std::string& kernel, const std::string& disk) {
    std::ofstream(daemon.dir() + "/" + name + ".json")
        << absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")", kernel,
                        R"(", "accelerator": "emu", "disks": [{"path": ")", disk, R"("}]})");
    return daemon.Ctl({"create", daemon.dir() + "/" + name + ".json"});
  };
  ProcessResult outside_kernel = create("k", Runfile("tests/guests/xen_store.elf"), inside_disk);
  EXPECT_THAT(outside_kernel.err, HasSubstr("is outside the directories this daemon serves images from"));
  EXPECT_THAT(outside_kernel.err, HasSubstr("(PERMISSION_DENIED)"));
  EXPECT_THAT(create("s", allowed + "/escape.elf", inside_disk).err, HasSubstr("(PERMISSION_DENIED)"));  // a symlink out
  EXPECT_THAT(create("d", allowed + "/store.elf", outside_disk).err, HasSubstr("disk.path"));
  ProcessResult inside = create("ok", allowed + "/store.elf", inside_disk);
  ASSERT_EQ(inside.status, 0) << inside.err;
  EXPECT_THAT(daemon.Ctl({"block-attach", "ok", outside_disk, "xvdb"}).err, HasSubstr("(PERMISSION_DENIED)"));
  EXPECT_EQ(daemon.Ctl({"destroy", "ok"}).status, 0);
  daemon.Stop(SIGTERM);
  EXPECT_EQ(OwnDaemon(dir).Start({"--image-dir", absl::StrCat(dir, "/none")}), false);  // refuses to start
  std::error_code error;
  std::filesystem::remove_all(dir, error);
}

// --metrics-listen: the Prometheus text endpoint, scraped and parsed; and xenkvmctl top from the
// same numbers through the API.
TEST(XenkvmdMetricsTest, TheEndpointServesVmDiskEventAndApiMetrics) {
  char dir[] = "/tmp/xkm-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  OwnDaemon daemon(dir);
  ASSERT_TRUE(daemon.Start({"--metrics-listen", "127.0.0.1:0"}));
  int port = 0;
  for (int i = 0; i < 100 && port == 0; ++i) {
    std::ifstream log(daemon.dir() + "/daemon.log");
    std::string line;
    while (std::getline(log, line)) {
      if (size_t at = line.find("metrics on port "); at != std::string::npos) port = std::atoi(line.c_str() + at + 16);
    }
    if (port == 0) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GT(port, 0);
  const std::string image = MakeDiskImage(daemon.dir() + "/m.img", 4096);
  const bool with_tap = access("/dev/net/tun", R_OK | W_OK) == 0;
  std::ofstream(daemon.dir() + "/m.json") << absl::StrCat(R"({"name": "metered", "memory_mib": 32, "kernel": ")",
                                                          Runfile("tests/guests/xen_store.elf"),
                                                          R"(", "accelerator": "emu", "disks": [{"path": ")", image, R"("}])",
                                                          // a vif too where a tap can be made (its counters)
                                                          with_tap ? R"(, "networks": [{"mac": "00:16:3e:00:00:09"}]})" : "}");
  ASSERT_EQ(daemon.Ctl({"create", daemon.dir() + "/m.json"}).status, 0);
  EXPECT_EQ(daemon.Ctl({"info", "nobody"}).status, 1);  // a NOT_FOUND, counted
  ProcessResult scraped = testing::RunProcess(
      {"/usr/bin/python3", "-c",
       absl::StrCat("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:", port,
                    "/metrics', timeout=10).read().decode())")});
  ASSERT_EQ(scraped.status, 0) << scraped.err;
  // Every sample line parses as NAME{LABELS} VALUE.
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(scraped.out, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    ASSERT_NE(space, absl::string_view::npos) << line;
    double value = 0;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(space + 1), &value) || line.substr(space + 1) == "Nan") << line;
    samples[std::string(line.substr(0, space))] = value;
  }
  EXPECT_EQ(samples[R"(xenkvm_vm_state{vm="metered",state="running"})"], 1);
  EXPECT_EQ(samples[R"(xenkvm_vm_memory_bytes{vm="metered"})"], 32 << 20);
  EXPECT_GT(samples[R"(xenkvm_vmm_resident_bytes{vm="metered"})"], 0);
  EXPECT_TRUE(samples.count(R"(xenkvm_vcpu_seconds_total{vm="metered",vcpu="0"})")) << scraped.out;
  EXPECT_TRUE(samples.count(R"(xenkvm_disk_requests_total{vm="metered",disk="xvda"})")) << scraped.out;
  EXPECT_TRUE(samples.count(R"(xenkvm_disk_request_seconds_bucket{vm="metered",disk="xvda",le="+Inf"})")) << scraped.out;
  EXPECT_GT(samples[R"(xenkvm_hypercalls_total{vm="metered",hypercall="event_channel_op"})"], 0) << scraped.out;
  if (with_tap) {
    EXPECT_TRUE(samples.count(R"(xenkvm_net_packets_total{vm="metered",vif="0",direction="tx"})")) << scraped.out;
    EXPECT_TRUE(samples.count(R"(xenkvm_net_errors_total{vm="metered",vif="0",direction="rx"})")) << scraped.out;
  }
  EXPECT_EQ(samples[R"(xenkvm_api_calls_total{method="CreateVm",code="OK"})"], 1);
  EXPECT_EQ(samples[R"(xenkvm_api_calls_total{method="GetVm",code="NOT_FOUND"})"], 1);
  ProcessResult top = daemon.Ctl({"top", "-i", "2", "-d", "0.2"});
  EXPECT_EQ(top.status, 0) << top.err;
  EXPECT_THAT(top.out, HasSubstr("CPU(%)"));
  EXPECT_THAT(top.out, HasSubstr("metered  running"));
  EXPECT_EQ(daemon.Ctl({"destroy", "metered"}).status, 0);
  daemon.Stop(SIGTERM);
  std::error_code error;
  std::filesystem::remove_all(dir, error);
}

// A full state disk: CreateVm fails saying so, and leaves no half-written definition behind (a
// restarted daemon finds no nameless VM). Needs a small tmpfs of its own (root).
TEST(XenkvmdFullDiskTest, AFullStateDiskFailsTheRequestAndLosesNothing) {
  char dir[] = "/tmp/xkf-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string state = absl::StrCat(dir, "/state");
  std::filesystem::create_directories(state);
  if (mount("xenkvm-test", state.c_str(), "tmpfs", 0, "size=256k") != 0) {
    GTEST_SKIP() << "cannot mount a small tmpfs for the state directory (needs root): " << std::strerror(errno);
  }
  OwnDaemon daemon(dir);
  ASSERT_TRUE(daemon.Start());
  std::ofstream(daemon.dir() + "/first.json") << TickerJson("first");
  ASSERT_EQ(daemon.Ctl({"create", "-p", daemon.dir() + "/first.json"}).status, 0);
  {  // fill what is left
    std::ofstream filler(state + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
  }
  std::ofstream(daemon.dir() + "/second.json") << TickerJson("second");
  ProcessResult refused = daemon.Ctl({"create", "-p", daemon.dir() + "/second.json"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_THAT(refused.err, HasSubstr("No space left on device"));
  EXPECT_THAT(daemon.Ctl({"list"}).out, Not(HasSubstr("second")));
  daemon.Stop(SIGTERM);
  std::filesystem::remove(state + "/filler");
  ASSERT_TRUE(daemon.Start());
  const std::string listed = daemon.Ctl({"list"}).out;
  EXPECT_THAT(listed, HasSubstr("first"));       // intact
  EXPECT_THAT(listed, Not(HasSubstr("second")));  // nothing half-written came back
  daemon.Stop(SIGTERM);
  umount(state.c_str());
  std::error_code error;
  std::filesystem::remove_all(dir, error);
}

// --vmm-user: each VMM builds its VM as root, then runs it as that user, confined to an empty root;
// the daemon drives it as before, hands it hot-plugged files, and reports its end.
TEST(XenkvmdVmmUserTest, VmmsRunAsTheGivenUser) {
  if (geteuid() != 0) GTEST_SKIP() << "xenkvmd must run as root to start VMMs that change user";
  char dir[] = "/tmp/xku-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  OwnDaemon daemon(dir);
  ASSERT_TRUE(daemon.Start({"--vmm-user", "65534:65534"}));
  std::ofstream(daemon.dir() + "/u.json") << TickerJson("unprivileged");
  ASSERT_EQ(daemon.Ctl({"create", daemon.dir() + "/u.json"}).status, 0);
  ASSERT_TRUE(ConsoleShows(daemon, "unprivileged", "tick 3"));
  const std::string pid = daemon.Info("unprivileged", "pid");
  std::ifstream status("/proc/" + pid + "/status");
  std::string line, uid_line;
  while (std::getline(status, line)) {
    if (absl::StartsWith(line, "Uid:")) uid_line = line;
  }
  EXPECT_THAT(uid_line, HasSubstr("65534\t65534\t65534"));
  EXPECT_EQ(daemon.Ctl({"evtchn", "unprivileged"}).status, 0);  // its control socket still answers
  // Started by root, the VMM is confined to an empty root of its own: every thread sees nothing.
  // (Not in sanitizer builds, whose runtime needs /proc at exit: the VMM says it runs unconfined.)
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  size_t tasks = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + pid + "/task")) {
    ++tasks;
    const std::filesystem::path root = task.path() / "root";
    EXPECT_TRUE(std::filesystem::is_empty(root)) << root;
  }
  EXPECT_GT(tasks, 2u);
#endif
  // A root-only image, hot-plugged: the daemon opens it and hands it over; the VMM, unprivileged
  // and confined, could not have opened it itself.
  const std::string image = daemon.dir() + "/root-only.img";
  std::ofstream(image) << std::string(1 << 20, '\0');
  ASSERT_EQ(chmod(image.c_str(), 0600), 0);
  ProcessResult attached = daemon.Ctl({"block-attach", "unprivileged", image, "xvdb"});
  EXPECT_EQ(attached.status, 0) << attached.err;
  EXPECT_THAT(daemon.Ctl({"block-list", "unprivileged"}).out, HasSubstr(image));
  EXPECT_EQ(daemon.Ctl({"block-detach", "unprivileged", "xvdb"}).status, 0);
  EXPECT_EQ(daemon.Ctl({"destroy", "unprivileged"}).status, 0);
  EXPECT_EQ(daemon.Info("unprivileged", "last end"), "destroyed");
  daemon.Stop(SIGTERM);
  EXPECT_FALSE(OwnDaemon(dir).Start({"--vmm-user", "0:0"}));  // root is refused
  std::error_code error;
  std::filesystem::remove_all(dir, error);
}

}  // namespace
}  // namespace xenkvm::api
