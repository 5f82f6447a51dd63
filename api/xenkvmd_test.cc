// xenkvmd end to end with one daemon for the suite: lifecycle, events, devices, the console,
// memory and the hypervisor log, refusals (xenkvmd_test_fixture.h).
#include "api/xenkvmd_test_fixture.h"

namespace xenkvm::api {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST_F(XenkvmdTest, LifecycleThroughTheCli) {
  ProcessResult created = Ctl({"create", TickerConfig("tick1")});
  ASSERT_EQ(created.status, 0) << created.err;
  EXPECT_THAT(created.out, HasSubstr("tick1: running (pid "));
  ProcessResult listed = Ctl({"list"});
  EXPECT_THAT(listed.out, HasSubstr("NAME"));
  EXPECT_THAT(listed.out, HasSubstr("tick1"));
  EXPECT_THAT(listed.out, HasSubstr("running"));

  // The console: replayed, without following.
  absl::SleepFor(absl::Milliseconds(400));
  ProcessResult console = Ctl({"console", "tick1", "--no-follow"});
  EXPECT_EQ(console.status, 0) << console.err;
  EXPECT_THAT(console.out, HasSubstr("ticker: VIRQ_TIMER on port 3"));  // 1, 2: XenStore, PV console

  // Event channels: the timer's port, its counters moving.
  ProcessResult table = Ctl({"evtchn", "tick1"});
  EXPECT_EQ(table.status, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("PORT  VCPU  TYPE"));
  EXPECT_THAT(table.out, HasSubstr("virq 0"));
  EXPECT_THAT(table.out, HasSubstr("backend"));  // XenStore's port, bound to the VMM
  EXPECT_THAT(table.out, HasSubstr("hypercalls: "));
  ProcessResult json = Ctl({"--json", "evtchn", "tick1"});
  EXPECT_THAT(json.out, HasSubstr("\"type\": \"virq\""));
  uint64_t before = TimerDeliveries("tick1");
  absl::SleepFor(absl::Milliseconds(300));
  uint64_t after = TimerDeliveries("tick1");
  EXPECT_GT(after, before);

  // Paused, the guest's vCPU takes no events: its upcall count stands still.
  ASSERT_EQ(Ctl({"pause", "tick1"}).status, 0);
  EXPECT_EQ(Get("tick1").state(), v1::VM_STATE_PAUSED);
  auto upcalls = [&] {
    const v1::EventChannelList list = EventChannels("tick1");
    for (const v1::EventChannel& port : list.ports()) {
      if (port.type() == "virq") return port.upcalls();
    }
    return uint64_t{0};
  };
  absl::SleepFor(absl::Milliseconds(100));
  uint64_t paused_upcalls = upcalls();
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(upcalls(), paused_upcalls);
  EXPECT_EQ(Ctl({"pause", "tick1"}).status, 0);  // already paused: no error, as xl
  EXPECT_EQ(Get("tick1").state(), v1::VM_STATE_PAUSED);
  ASSERT_EQ(Ctl({"unpause", "tick1"}).status, 0);
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_GT(upcalls(), paused_upcalls);

  ProcessResult devices = Ctl({"block-list", "tick1"});
  EXPECT_EQ(devices.status, 0) << devices.err;
  EXPECT_THAT(devices.out, HasSubstr("xen-console"));
  ProcessResult info = Ctl({"info", "tick1"});
  EXPECT_THAT(info.out, HasSubstr("accelerator:  emu"));
  // The ticker has no PV drivers: it never answers control/shutdown, and is destroyed after the timeout.
  ProcessResult shutdown = Ctl({"shutdown", "tick1", "--timeout", "2"});
  EXPECT_EQ(shutdown.status, 0) << shutdown.err;
  EXPECT_THAT(shutdown.out, HasSubstr("tick1: shutdown"));
  EXPECT_THAT(shutdown.out, HasSubstr("never advertised control/feature-poweroff"));
  EXPECT_EQ(Get("tick1").state(), v1::VM_STATE_SHUTDOWN);

  // xl's habits: create of a defined VM that is not running starts it; flags are checked.
  ProcessResult recreated = Ctl({"create", TickerConfig("tick1")});
  ASSERT_EQ(recreated.status, 0) << recreated.err;
  EXPECT_EQ(Get("tick1").state(), v1::VM_STATE_RUNNING);
  ASSERT_EQ(Ctl({"destroy", "tick1"}).status, 0);
  ProcessResult bogus = Ctl({"list", "--bogus"});
  EXPECT_EQ(bogus.status, 2);
  EXPECT_THAT(bogus.err, HasSubstr("--bogus"));
  EXPECT_EQ(Ctl({"shutdown", "-w"}).status, 2);  // -w is a flag, not a VM name
  EXPECT_THAT(Ctl({"--version"}).out, HasSubstr("xenkvmctl "));
  EXPECT_THAT(Ctl({"--json", "list"}).out, HasSubstr("\"memory_mib\": 32"));  // a number, not "32"
  EXPECT_THAT(Ctl({"list", "-l"}).out, HasSubstr("\"kernel\":"));

  ASSERT_EQ(Ctl({"start", "tick1"}).status, 0);  // an ended VM starts again
  EXPECT_EQ(Get("tick1").state(), v1::VM_STATE_RUNNING);
  ProcessResult destroyed = Ctl({"destroy", "tick1"});
  EXPECT_EQ(destroyed.status, 0);
  EXPECT_EQ(Get("tick1").end_reason(), "destroyed");
  ASSERT_EQ(Ctl({"delete", "tick1"}).status, 0);
  EXPECT_THAT(Ctl({"list"}).out, Not(HasSubstr("tick1")));
}

TEST_F(XenkvmdTest, AGuestThatPowersOffIsShutDownWithEvents) {
  grpc::ClientContext watch_context;
  v1::WatchEventsRequest watch;
  watch.set_name("tick2");
  auto events = Stub()->WatchEvents(&watch_context, watch);
  absl::SleepFor(absl::Milliseconds(100));  // the watch is in place
  ProcessResult created = Ctl({"create", TickerConfig("tick2", "ticks=20")});
  ASSERT_EQ(created.status, 0) << created.err;
  std::vector<v1::VmEvent::Kind> kinds;
  v1::VmEvent event;
  while (kinds.size() < 3 && events->Read(&event)) kinds.push_back(event.kind());
  EXPECT_EQ(kinds, (std::vector<v1::VmEvent::Kind>{v1::VmEvent::CREATED, v1::VmEvent::STARTED, v1::VmEvent::SHUT_DOWN}));
  EXPECT_EQ(event.detail(), "the guest powered off");
  watch_context.TryCancel();
  v1::Vm vm = Get("tick2");
  EXPECT_EQ(vm.state(), v1::VM_STATE_SHUTDOWN);
  EXPECT_EQ(vm.exit_status(), 0);
  ProcessResult console = Ctl({"console", "tick2"});  // ended: replays and returns
  EXPECT_THAT(console.out, HasSubstr("ticker: 20 ticks, powering off"));
  ASSERT_EQ(Ctl({"delete", "tick2"}).status, 0);
}

// `xenkvmctl shutdown` as `xl shutdown`: XenStore's control/shutdown reaches the guest's watch,
// the guest powers off well before the deadline. The VM's store is open to xenstore-utils meanwhile.
TEST_F(XenkvmdTest, ShutdownIsGracefulThroughXenStore) {
  ASSERT_TRUE(StartXenStoreGuest("store1"));
  const v1::Vm vm = Get("store1");
  ASSERT_FALSE(vm.xenstore_socket().empty());
  EXPECT_THAT(Ctl({"info", "store1"}).out, HasSubstr(vm.xenstore_socket()));
  if (access("/usr/bin/xenstore-read", X_OK) == 0) {
    ProcessResult name = testing::RunProcess({"/usr/bin/env", "XENSTORED_PATH=" + vm.xenstore_socket(),
                                              "/usr/bin/xenstore-read", "/local/domain/1/name"});
    EXPECT_EQ(name.out, "store1\n") << name.err;
  }
  const absl::Time asked = absl::Now();
  ProcessResult shutdown = Ctl({"shutdown", "store1", "--timeout", "30"});
  EXPECT_EQ(shutdown.status, 0) << shutdown.err;
  EXPECT_LT(absl::Now() - asked, absl::Seconds(20));  // it did not wait for the deadline
  EXPECT_THAT(shutdown.out, HasSubstr("store1: shutdown (the guest powered off)"));
  EXPECT_THAT(Ctl({"console", "store1"}).out, HasSubstr("xenstore: asked to poweroff"));
  EXPECT_EQ(Get("store1").xenstore_socket(), "");
  ASSERT_EQ(Ctl({"delete", "store1"}).status, 0);
}

TEST_F(XenkvmdTest, ADiskInTheConfigIsTheGuestsXvda) {
  const std::string image = MakeDiskImage(*dir_ + "/disk1.img", 4096);
  ASSERT_EQ(Ctl({"create", WriteConfig("disk1.json", absl::StrCat(R"({"name": "disk1", "memory_mib": 32, "kernel": ")",
                                                                   Runfile("tests/guests/xen_disk.elf"),
                                                                   R"(", "accelerator": "emu", "disks": [{"path": ")",
                                                                   image, R"("}]})"))})
                .status,
            0);
  for (int i = 0; i < 200 && Get("disk1").state() == v1::VM_STATE_RUNNING; ++i) absl::SleepFor(absl::Milliseconds(50));
  const v1::Vm vm = Get("disk1");
  EXPECT_EQ(vm.end_reason(), "the guest powered off");
  EXPECT_EQ(vm.config().disks(0).vdev(), "xvda");  // the next free one
  std::string console = Ctl({"console", "disk1"}).out;
  EXPECT_THAT(console, HasSubstr("xen-disk: wrote, flushed and read back sector 16"));
  EXPECT_THAT(console, HasSubstr("PASS"));
  ProcessResult devices = Ctl({"block-list", "disk1"});  // not running: as configured
  EXPECT_THAT(devices.out, HasSubstr("xen-disk"));
  EXPECT_THAT(devices.out, HasSubstr(image));
  ASSERT_EQ(Ctl({"delete", "disk1"}).status, 0);
}

TEST_F(XenkvmdTest, DisksAreHotPluggedAndUnplugged) {
  const std::string image = MakeDiskImage(*dir_ + "/hot.img", 64);
  ASSERT_TRUE(StartXenStoreGuest("hp1"));
  grpc::ClientContext watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WatchEventsRequest watch;
  watch.set_name("hp1");
  auto events = Stub()->WatchEvents(&watch_context, watch);
  absl::SleepFor(absl::Milliseconds(100));  // the watch is in place
  // cache=none: the daemon opens the image, the jailed VMM makes the handed-over file O_DIRECT.
  EXPECT_NE(Ctl({"block-attach", "hp1", image, "--cache", "unsafe"}).status, 0);
  ProcessResult attached = Ctl({"block-attach", "hp1", image, "--cache", "none"});
  ASSERT_EQ(attached.status, 0) << attached.err;
  EXPECT_THAT(attached.out, HasSubstr("hp1: xvda attached"));
  ProcessResult listed = Ctl({"block-list", "hp1"});
  EXPECT_THAT(listed.out, HasSubstr("xen-disk"));
  EXPECT_THAT(listed.out, HasSubstr("InitWait"));      // the backend waits for a frontend
  EXPECT_THAT(listed.out, HasSubstr("Initialising"));  // which this guest never starts
  if (access("/usr/bin/xenstore-read", X_OK) == 0) {
    ProcessResult state = testing::RunProcess({"/usr/bin/env", "XENSTORED_PATH=" + Get("hp1").xenstore_socket(),
                                               "/usr/bin/xenstore-read", "/local/domain/0/backend/vbd/1/51712/state"});
    EXPECT_EQ(state.out, "2\n") << state.err;
  }
  EXPECT_THAT(Ctl({"block-attach", "hp1", image, "xvda"}).err, HasSubstr("(ALREADY_EXISTS)"));
  EXPECT_THAT(Ctl({"block-attach", "hp1", image, "51712"}).err, HasSubstr("(ALREADY_EXISTS)"));  // xvda by number
  // A refused attach changes nothing: the live disk keeps its XenStore nodes.
  EXPECT_THAT(Ctl({"block-list", "hp1"}).out, HasSubstr("InitWait"));
  if (access("/usr/bin/xenstore-read", X_OK) == 0) {
    ProcessResult state = testing::RunProcess({"/usr/bin/env", "XENSTORED_PATH=" + Get("hp1").xenstore_socket(),
                                               "/usr/bin/xenstore-read", "/local/domain/0/backend/vbd/1/51712/state"});
    EXPECT_EQ(state.out, "2\n") << state.err;
  }
  // The image is xvda's, read-write: no second disk gets it (QEMU's image locking), and the
  // refusal names the holder.
  ProcessResult twice = Ctl({"block-attach", "hp1", image, "xvdc"});
  EXPECT_THAT(twice.err, HasSubstr("(FAILED_PRECONDITION)"));
  EXPECT_THAT(twice.err, HasSubstr("is in use by xenkvm-vmm pid"));
  EXPECT_THAT(twice.err, HasSubstr("(VM 'hp1')"));
  // Concurrent attaches of one vdev: exactly one wins.
  const std::string second = MakeDiskImage(*dir_ + "/hot2.img", 64);
  std::vector<ProcessResult> racers(8);
  std::vector<std::thread> threads;
  for (ProcessResult& racer : racers) threads.emplace_back([&] { racer = Ctl({"block-attach", "hp1", second, "xvdb", "--ro"}); });
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(std::count_if(racers.begin(), racers.end(), [](const ProcessResult& r) { return r.status == 0; }), 1);
  const std::string with_xvdb = Ctl({"block-list", "hp1"}).out;
  const std::vector<std::string> pieces = absl::StrSplit(with_xvdb, "xen-disk");
  EXPECT_EQ(pieces.size(), 3u) << with_xvdb;  // xvda and one xvdb
  ASSERT_EQ(Ctl({"block-detach", "hp1", "xvdb"}).status, 0);  // the VMM is unharmed
  EXPECT_THAT(Ctl({"block-attach", "hp1", *dir_ + "/none.img", "xvdb"}).err, HasSubstr("(NOT_FOUND)"));
  EXPECT_THAT(Ctl({"block-attach", "hp1", image, "vda"}).err, HasSubstr("use xvd<letters>"));
  ProcessResult detached = Ctl({"block-detach", "hp1", "xvda"});
  EXPECT_EQ(detached.status, 0) << detached.err;
  EXPECT_THAT(Ctl({"block-list", "hp1"}).out, Not(HasSubstr("xen-disk")));
  EXPECT_THAT(Ctl({"block-detach", "hp1", "xvda"}).err, HasSubstr("(NOT_FOUND)"));
  v1::VmEvent event;
  ASSERT_TRUE(events->Read(&event));
  EXPECT_EQ(event.kind(), v1::VmEvent::DISK_ATTACHED);
  EXPECT_THAT(event.detail(), HasSubstr("xvda " + image));
  ASSERT_TRUE(events->Read(&event));
  EXPECT_EQ(event.kind(), v1::VmEvent::DISK_ATTACHED);  // xvdb, once
  EXPECT_THAT(event.detail(), HasSubstr("xvdb " + second));
  ASSERT_TRUE(events->Read(&event));
  EXPECT_EQ(event.kind(), v1::VmEvent::DISK_DETACHED);
  EXPECT_EQ(event.detail(), "xvdb (released by the guest)");
  ASSERT_TRUE(events->Read(&event));
  EXPECT_EQ(event.kind(), v1::VmEvent::DISK_DETACHED);
  EXPECT_EQ(event.detail(), "xvda (released by the guest)");
  watch_context.TryCancel();
  ASSERT_EQ(Ctl({"destroy", "hp1"}).status, 0);
  ASSERT_EQ(Ctl({"delete", "hp1"}).status, 0);
}

TEST_F(XenkvmdTest, AKilledVmmIsReportedCrashed) {
  ASSERT_EQ(Ctl({"create", TickerConfig("tick3")}).status, 0);
  v1::Vm vm = Get("tick3");
  ASSERT_GT(vm.pid(), 0);
  kill(static_cast<pid_t>(vm.pid()), SIGKILL);
  for (int i = 0; i < 100 && Get("tick3").state() == v1::VM_STATE_RUNNING; ++i) absl::SleepFor(absl::Milliseconds(50));
  vm = Get("tick3");
  EXPECT_EQ(vm.state(), v1::VM_STATE_CRASHED);
  EXPECT_EQ(vm.end_reason(), "the VMM was killed by signal 9");
  EXPECT_THAT(Ctl({"list"}).out, HasSubstr("crashed"));  // the daemon keeps serving
  ASSERT_EQ(Ctl({"delete", "tick3"}).status, 0);
  // SIGSYS is how the VMM's seccomp filter ends it (vmm/seccomp_filter_test makes a real one).
  ASSERT_EQ(Ctl({"create", TickerConfig("tick4")}).status, 0);
  kill(static_cast<pid_t>(Get("tick4").pid()), SIGSYS);
  for (int i = 0; i < 100 && Get("tick4").state() == v1::VM_STATE_RUNNING; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(Get("tick4").state(), v1::VM_STATE_CRASHED);
  EXPECT_THAT(Get("tick4").end_reason(), HasSubstr("system call its seccomp filter forbids"));
  ASSERT_EQ(Ctl({"delete", "tick4"}).status, 0);
}

// VMMs that end while the daemon waits for them to start (each config makes xenkvm-vmm refuse
// the VM): the daemon reports each as it ended and stays up, with every other VM still served.
TEST_F(XenkvmdTest, VmmsThatDieDuringTheirStartLeaveTheDaemonUnharmed) {
  ASSERT_EQ(Ctl({"create", TickerConfig("bystander")}).status, 0);
  const std::string kernel = Runfile("tests/guests/xen_ticker.elf");
  const std::string tiny = WriteConfig("tiny.img", "abc");
  const std::vector<std::string> disks = {
      R"([{"target": "/no/such/image"}])",
      R"([{"target": "/dev/zero"}])",
      absl::StrCat(R"([{"target": ")", *dir_, R"("}])"),
      absl::StrCat(R"([{"target": ")", tiny, R"("}])"),
      absl::StrCat(R"([{"target": ")", tiny, R"(", "vdev": "xvda"}, {"target": ")", tiny, R"(", "vdev": "51712"}])"),
  };
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < disks.size(); ++i) {
      const std::string name = absl::StrCat("dies", round, "-", i);
      const std::string config = WriteConfig(name + ".json", absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")",
                                                                         kernel, R"(", "accelerator": "emu", "disks": )",
                                                                         disks[i], "}"));
      ProcessResult created = Ctl({"create", config});
      EXPECT_EQ(created.status, 1) << name << ": " << created.out;
      EXPECT_THAT(created.err, Not(HasSubstr("UNKNOWN"))) << name;
      ASSERT_EQ(waitpid(daemon_, nullptr, WNOHANG), 0) << "xenkvmd died on " << name << ": " << created.err;
      (void)Ctl({"delete", name});
    }
    ProcessResult bad_version = Ctl({"create", WriteConfig("v.json", absl::StrCat(R"({"name": "badversion", "kernel": ")", kernel,
                                                                                 R"(", "accelerator": "emu", "xen_version": "0xffffffff"})"))});
    EXPECT_EQ(bad_version.status, 1);
    ASSERT_EQ(waitpid(daemon_, nullptr, WNOHANG), 0) << "xenkvmd died: " << bad_version.err;
    (void)Ctl({"delete", "badversion"});
  }
  EXPECT_EQ(Get("bystander").state(), v1::VM_STATE_RUNNING);
  EXPECT_EQ(Ctl({"destroy", "bystander"}).status, 0);
  EXPECT_EQ(Ctl({"delete", "bystander"}).status, 0);
}

// One image, two VMs: the second start is refused while the first holds it read-write, naming the
// holder; read-only users share it.
TEST_F(XenkvmdTest, ImageLocksKeepTwoVmsFromOneWritableImage) {
  const std::string image = MakeDiskImage(*dir_ + "/locked.img", 64);
  auto config = [&](const std::string& name, bool read_only) {
    return WriteConfig(name + ".json",
                       absl::StrCat(R"({"name": ")", name, R"(", "memory_mib": 32, "kernel": ")",
                                    Runfile("tests/guests/xen_store.elf"), R"(", "accelerator": "emu", "disks": [{"path": ")",
                                    image, R"(", "read_only": )", read_only ? "true" : "false", "}]}"));
  };
  ASSERT_EQ(Ctl({"create", config("owner", false)}).status, 0);
  ProcessResult second = Ctl({"create", config("intruder", false)});
  EXPECT_EQ(second.status, 1);
  EXPECT_THAT(second.err, HasSubstr("is in use by xenkvm-vmm pid"));
  EXPECT_THAT(second.err, HasSubstr("(VM 'owner')"));
  ProcessResult reader = Ctl({"create", config("reader", true)});
  EXPECT_EQ(reader.status, 1);
  EXPECT_THAT(reader.err, HasSubstr("is in use read-write by xenkvm-vmm pid"));
  EXPECT_EQ(Get("owner").state(), v1::VM_STATE_RUNNING);  // unharmed
  ASSERT_EQ(Ctl({"destroy", "owner"}).status, 0);
  ASSERT_EQ(Ctl({"start", "reader"}).status, 0);  // free now; readers share it
  ProcessResult second_reader = Ctl({"create", config("reader2", true)});
  EXPECT_EQ(second_reader.status, 0) << second_reader.err;
  for (const char* name : {"reader", "reader2"}) (void)Ctl({"destroy", name});
  for (const char* name : {"owner", "intruder", "reader", "reader2"}) (void)Ctl({"delete", name});
}

// xl's on_* policies: a guest's reboot restarts it in a fresh VMM (the default on_reboot), or ends
// it (on_reboot = destroy); a guest that keeps powering off under on_poweroff = restart is
// restarted 5 times within a minute, then left ended, saying why.
TEST_F(XenkvmdTest, RebootAndTheOnPoliciesRestartOrEndTheVm) {
  grpc::ClientContext watch_context;
  watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::WatchEventsRequest watch;
  watch.set_name("rb");
  auto events = Stub()->WatchEvents(&watch_context, watch);
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(StartXenStoreGuest("rb"));
  const int64_t first_pid = Get("rb").pid();
  ProcessResult rebooted = Ctl({"reboot", "rb"});
  ASSERT_EQ(rebooted.status, 0) << rebooted.err;
  EXPECT_THAT(rebooted.out, HasSubstr("rb: running (restarted in a fresh VMM)"));
  EXPECT_EQ(Get("rb").state(), v1::VM_STATE_RUNNING);
  EXPECT_NE(Get("rb").pid(), first_pid);
  bool restarted = false;
  v1::VmEvent event;
  while (!restarted && events->Read(&event)) {
    if (event.kind() == v1::VmEvent::RESTARTED) {
      restarted = true;
      EXPECT_THAT(event.detail(), HasSubstr("on_reboot=restart after:"));
    }
  }
  EXPECT_TRUE(restarted);
  watch_context.TryCancel();
  ASSERT_EQ(Ctl({"destroy", "rb"}).status, 0);
  ASSERT_EQ(Ctl({"delete", "rb"}).status, 0);

  const std::string ends = WriteConfig("rb2.json", absl::StrCat(R"({"name": "rb2", "memory_mib": 32, "kernel": ")",
                                                                Runfile("tests/guests/xen_store.elf"),
                                                                R"(", "accelerator": "emu", "on_reboot": "destroy"})"));
  ASSERT_EQ(Ctl({"create", ends}).status, 0);
  for (int i = 0; i < 200 && Ctl({"console", "rb2", "--no-follow"}).out.find("ready for control/shutdown") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ProcessResult ended = Ctl({"reboot", "rb2"});
  EXPECT_EQ(ended.status, 0) << ended.err;
  EXPECT_EQ(Get("rb2").state(), v1::VM_STATE_SHUTDOWN);
  EXPECT_THAT(Get("rb2").end_reason(), HasSubstr("reset"));
  (void)Ctl({"delete", "rb2"});

  ASSERT_EQ(Ctl({"create", WriteConfig("loop.json", absl::StrCat(R"({"name": "loop", "memory_mib": 32, "kernel": ")",
                                                                 Runfile("tests/guests/xen_ticker.elf"),
                                                                 R"(", "accelerator": "emu", "cmdline": "ticks=5", "on_poweroff": "restart"})"))})
                .status,
            0);
  for (int i = 0; i < 600 && Get("loop").end_reason().find("not restarted") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(Get("loop").state(), v1::VM_STATE_SHUTDOWN);
  EXPECT_THAT(Get("loop").end_reason(), HasSubstr("(on_poweroff=restart: not restarted, 5 restarts within 1m)"));
  (void)Ctl({"delete", "loop"});
}

// Events carry sequence numbers; a watcher that went away resumes with `since` and misses nothing.
TEST_F(XenkvmdTest, EventsResumeFromASequenceNumber) {
  ASSERT_EQ(Ctl({"create", TickerConfig("seq1")}).status, 0);
  ASSERT_EQ(Ctl({"destroy", "seq1"}).status, 0);
  ASSERT_EQ(Ctl({"delete", "seq1"}).status, 0);
  // Everything kept after sequence 0: at least seq1's four events, numbered in order.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WatchEventsRequest request;
  request.set_name("seq1");
  request.set_since(0);
  auto reader = Stub()->WatchEvents(&context, request);
  std::vector<v1::VmEvent> seen;
  v1::VmEvent event;
  while (seen.size() < 4 && reader->Read(&event)) seen.push_back(event);
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].kind(), v1::VmEvent::CREATED);
  EXPECT_EQ(seen[3].kind(), v1::VmEvent::DELETED);
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_GT(seen[i].sequence(), seen[i - 1].sequence());
  context.TryCancel();
  // Resuming after the second: the third and fourth again, not the first two.
  grpc::ClientContext resumed_context;
  resumed_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  request.set_since(seen[1].sequence());
  auto resumed = Stub()->WatchEvents(&resumed_context, request);
  ASSERT_TRUE(resumed->Read(&event));
  EXPECT_EQ(event.sequence(), seen[2].sequence());
  resumed_context.TryCancel();
  // A sequence number this daemon never reached: it says so.
  grpc::ClientContext future_context;
  request.set_since(uint64_t{1} << 40);
  auto future = Stub()->WatchEvents(&future_context, request);
  EXPECT_FALSE(future->Read(&event));
  EXPECT_EQ(future->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

// The interactive console (`xl console`): input reaches the guest's PV console, its answers come
// back, and the run's end ends the session; input that ends early leaves the output running.
TEST_F(XenkvmdTest, ConsoleInputReachesTheGuest) {
  ASSERT_EQ(Ctl({"create", WriteConfig("echo.json", absl::StrCat(R"({"name": "echo", "memory_mib": 32, "kernel": ")",
                                                                 Runfile("tests/guests/xen_console.elf"),
                                                                 R"(", "accelerator": "emu", "cmdline": "echo"})"))})
                .status,
            0);
  for (int i = 0; i < 200 && Ctl({"console", "echo", "--no-follow"}).out.find("echo mode") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  ProcessResult session = testing::RunProcess(
      {"/bin/sh", "-c",
       absl::StrCat("printf 'hello guest\\nquit\\n' | ", Runfile("tools/xenkvmctl"), " --socket ", *socket_,
                    " console echo --input --no-replay")},
      absl::Seconds(30));
  EXPECT_EQ(session.status, 0) << session.err;
  EXPECT_THAT(session.out, HasSubstr("echo: hello guest"));
  EXPECT_THAT(session.out, HasSubstr("echo: quit"));
  for (int i = 0; i < 100 && Get("echo").state() == v1::VM_STATE_RUNNING; ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(Get("echo").end_reason(), "the guest powered off");
  EXPECT_THAT(Ctl({"console", "echo", "--input"}).err, HasSubstr("not running"));  // input needs a running VM
  (void)Ctl({"delete", "echo"});
}

// A stopped VMM (SIGSTOP) fails only its own VM's calls, by their deadline; the daemon keeps
// serving every other VM at once.
TEST_F(XenkvmdTest, AStoppedVmmStallsOnlyItsOwnCalls) {
  ASSERT_EQ(Ctl({"create", TickerConfig("frozen")}).status, 0);
  ASSERT_EQ(Ctl({"create", TickerConfig("lively")}).status, 0);
  const pid_t frozen = static_cast<pid_t>(Get("frozen").pid());
  ASSERT_GT(frozen, 0);
  ASSERT_EQ(kill(frozen, SIGSTOP), 0);
  std::vector<ProcessResult> stalled(2);
  std::thread evtchn([&] { stalled[0] = Ctl({"evtchn", "frozen"}); });
  std::thread pause([&] { stalled[1] = Ctl({"pause", "frozen"}); });
  absl::SleepFor(absl::Milliseconds(200));  // both calls now wait on the stopped VMM
  for (int i = 0; i < 3; ++i) {
    const absl::Time start = absl::Now();
    EXPECT_EQ(Ctl({"list"}).status, 0);
    EXPECT_EQ(Ctl({"evtchn", "lively"}).status, 0);
    EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "the other VM waited for the stopped VMM";
  }
  evtchn.join();
  pause.join();
  EXPECT_THAT(stalled[0].err, HasSubstr("(DEADLINE_EXCEEDED)"));
  EXPECT_THAT(stalled[1].err, HasSubstr("(DEADLINE_EXCEEDED)"));
  kill(frozen, SIGCONT);
  EXPECT_EQ(Ctl({"evtchn", "frozen"}).status, 0);  // it answers again
  for (const char* name : {"frozen", "lively"}) {
    EXPECT_EQ(Ctl({"destroy", name}).status, 0);
    EXPECT_EQ(Ctl({"delete", name}).status, 0);
  }
}

TEST_F(XenkvmdTest, BadInputGetsTheRightCodeAndMessage) {
  ProcessResult unknown = Ctl({"info", "nosuchvm"});
  EXPECT_EQ(unknown.status, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no VM named \"nosuchvm\" (NOT_FOUND)"));

  ASSERT_EQ(Ctl({"create", "-p", TickerConfig("dup")}).status, 0);
  EXPECT_EQ(Get("dup").state(), v1::VM_STATE_CREATED);
  EXPECT_EQ(Ctl({"create", "-p", TickerConfig("dup")}).status, 0);  // the same again: idempotent
  ProcessResult duplicate = Ctl({"create", "-p", TickerConfig("dup", "other")});
  EXPECT_THAT(duplicate.err, HasSubstr("(ALREADY_EXISTS)"));
  ProcessResult not_running = Ctl({"pause", "dup"});
  EXPECT_THAT(not_running.err, HasSubstr("is created, not running (FAILED_PRECONDITION)"));
  EXPECT_THAT(Ctl({"evtchn", "dup"}).err, HasSubstr("(FAILED_PRECONDITION)"));
  EXPECT_THAT(Ctl({"block-attach", "dup", "/tmp/disk.img", "xvda"}).err, HasSubstr("(FAILED_PRECONDITION)"));

  ProcessResult missing = Ctl({"create", WriteConfig("missing.json", R"({"name": "m", "kernel": "/no/such/vmlinux"})")});
  EXPECT_THAT(missing.err, HasSubstr("kernel: cannot open /no/such/vmlinux: No such file or directory (INVALID_ARGUMENT)"));
  std::string text_kernel = WriteConfig("text-kernel", "not a kernel\n");
  ProcessResult malformed =
      Ctl({"create", WriteConfig("bad.json", absl::StrCat(R"({"name": "b", "kernel": ")", text_kernel, R"("})"))});
  EXPECT_THAT(malformed.err, HasSubstr("neither an ELF kernel (vmlinux) nor a bzImage"));
  EXPECT_THAT(malformed.err, HasSubstr("(INVALID_ARGUMENT)"));
  // A device as the kernel is refused before it is read (it would never end).
  ProcessResult device = Ctl({"create", WriteConfig("zero.json", R"({"name": "z", "kernel": "/dev/zero"})")});
  EXPECT_THAT(device.err, HasSubstr("kernel: /dev/zero is not a regular file (INVALID_ARGUMENT)"));
  ProcessResult no_initrd = Ctl({"create", WriteConfig("noinitrd.json", absl::StrCat(R"({"name": "i", "kernel": ")",
                                                                                   Runfile("tests/guests/xen_ticker.elf"),
                                                                                   R"(", "initrd": "/no/initrd"})"))});
  EXPECT_THAT(no_initrd.err, HasSubstr("initrd: /no/initrd is not a readable regular file (INVALID_ARGUMENT)"));
  ProcessResult bad_key = Ctl({"create", WriteConfig("key.json", R"({"name": "k", "colour": "red"})")});
  EXPECT_EQ(bad_key.status, 1);
  EXPECT_THAT(bad_key.err, HasSubstr("not a valid VM config"));
  ProcessResult bad_value = Ctl({"create", WriteConfig("value.json", R"({"name": "v", "vcpus": 99, "kernel": "/k"})")});
  EXPECT_THAT(bad_value.err, HasSubstr("vcpus: 99 is out of range (1 to 32) (INVALID_ARGUMENT)"));
  ProcessResult xl = Ctl({"create", WriteConfig("x.cfg", "name='x'\nkernel='/k'\npci=['01:00.0']\n")});
  EXPECT_THAT(xl.err, HasSubstr("unsupported xl.cfg keys: pci"));
  ProcessResult bad_vif = Ctl({"create", WriteConfig("v.cfg", "name='v'\nkernel='/k'\nvif=['mac=nonsense']\n")});
  EXPECT_THAT(bad_vif.err, HasSubstr("MAC address 'nonsense'"));

  // An oversized request: RESOURCE_EXHAUSTED from gRPC itself.
  grpc::ClientContext context;
  v1::CreateVmRequest huge;
  huge.mutable_config()->set_name("huge");
  huge.mutable_config()->set_cmdline(std::string(2 << 20, 'x'));
  v1::Vm vm;
  EXPECT_EQ(Stub()->CreateVm(&context, huge, &vm).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  EXPECT_EQ(Ctl({"delete", "dup"}).status, 0);
  EXPECT_EQ(Ctl({"list"}).status, 0);  // the daemon is unharmed
  EXPECT_EQ(Ctl({"frobnicate"}).status, 2);
}

// `xenkvmctl mem-set` as `xl mem-set`: the target reaches the running VM (GetMemory shows it) with
// an event; sizes outside 1 MiB..its RAM, or not sizes, are refused saying so. `xenkvmctl dmesg`
// as `xl dmesg`: the guest's console_io lines, "(d1) "-prefixed, apart from its console; -c
// empties it.
// xl's network-attach/-detach/-list through the daemon: a vif on a tap the VMM creates (named by
// the kernel, no address: it vanishes with the VMM's descriptor), listed with its XenBus states,
// detached at once (the kit guest has no netfront, so nothing holds it), and the refusals.
TEST_F(XenkvmdTest, NetworkHotPlugThroughXlsVerbs) {
  if (access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/net/tun here (root and the tun module)";
  ASSERT_EQ(Ctl({"create", TickerConfig("net1")}).status, 0);
  ProcessResult attached = Ctl({"network-attach", "net1", "mac=00:16:3e:00:00:07"});
  ASSERT_EQ(attached.status, 0) << attached.err;
  EXPECT_THAT(attached.out, HasSubstr("net1: vif0 attached (mac 00:16:3e:00:00:07, tap "));
  ProcessResult second = Ctl({"network-attach", "net1"});
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_THAT(second.out, HasSubstr("net1: vif1 attached (mac 00:16:3e:"));
  ProcessResult listed = Ctl({"network-list", "net1"});
  EXPECT_THAT(listed.out, ::testing::ContainsRegex("0 +00:16:3e:00:00:07 +[a-z0-9]+ +- +InitWait +Initialising +0 +0"))
      << listed.out;
  EXPECT_THAT(Ctl({"--json", "network-list", "net1"}).out, HasSubstr(R"("kind": "xen-net")"));
  EXPECT_THAT(Ctl({"network-attach", "net1", "mtu=1"}).err, HasSubstr("68 to 65535"));
  EXPECT_THAT(Ctl({"network-attach", "net1", "model=e1000"}).err, HasSubstr("model=e1000"));
  EXPECT_THAT(Ctl({"network-detach", "net1", "7"}).err, HasSubstr("(NOT_FOUND)"));
  EXPECT_THAT(Ctl({"network-detach", "net1", "00:16:3e:99:99:99"}).err, HasSubstr("has no vif"));
  ProcessResult detached = Ctl({"network-detach", "net1", "00:16:3E:00:00:07"});
  EXPECT_EQ(detached.status, 0) << detached.err;
  EXPECT_THAT(detached.out, HasSubstr("released by the guest"));  // no frontend ever held it
  EXPECT_THAT(Ctl({"network-list", "net1"}).out, Not(HasSubstr("00:16:3e:00:00:07")));
  EXPECT_THAT(Ctl({"network-detach", "net1", "1", "--force"}).out, HasSubstr("forced"));
  // Indexes are not reused while the VM runs.
  EXPECT_THAT(Ctl({"network-attach", "net1"}).out, HasSubstr("vif2 attached"));
  ASSERT_EQ(Ctl({"destroy", "net1"}).status, 0);
  EXPECT_THAT(Ctl({"network-attach", "net1"}).err, HasSubstr("not running"));
}

TEST_F(XenkvmdTest, MemSetAndDmesg) {
  ASSERT_EQ(Ctl({"create", TickerConfig("mem1")}).status, 0);
  ProcessResult set = Ctl({"mem-set", "mem1", "16"});
  ASSERT_EQ(set.status, 0) << set.err;
  EXPECT_THAT(set.out, HasSubstr("mem1: memory target 16384 KiB; the guest holds 32768 KiB of 32768 KiB"));
  grpc::ClientContext context;
  v1::VmRef ref;
  ref.set_name("mem1");
  v1::MemoryStatus memory;
  ASSERT_TRUE(Stub()->GetMemory(&context, ref, &memory).ok());
  EXPECT_EQ(memory.target_kib(), 16384u);
  EXPECT_EQ(memory.max_kib(), 32768u);
  EXPECT_THAT(Ctl({"--json", "mem-set", "mem1", "24576k"}).out, HasSubstr(R"("target_kib": 24576)"));
  ProcessResult too_big = Ctl({"mem-set", "mem1", "1g"});
  EXPECT_NE(too_big.status, 0);
  EXPECT_THAT(too_big.err, HasSubstr("outside 1024..32768 KiB"));
  ProcessResult not_a_size = Ctl({"mem-set", "mem1", "lots"});
  EXPECT_EQ(not_a_size.status, 2);
  EXPECT_THAT(not_a_size.err, HasSubstr("\"lots\" is not a size"));
  EXPECT_NE(Ctl({"mem-set", "nosuchvm", "16"}).status, 0);

  std::string log;
  for (int i = 0; i < 200 && log.find("(d1) ticker: up") == std::string::npos; ++i) {
    log = Ctl({"dmesg", "mem1"}).out;
    if (log.find("(d1) ticker: up") == std::string::npos) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_THAT(log, HasSubstr("(d1) ticker: up (console_io)"));
  EXPECT_THAT(Ctl({"console", "mem1", "--no-follow"}).out, Not(HasSubstr("(console_io)")));
  EXPECT_THAT(Ctl({"dmesg", "-c", "mem1"}).out, HasSubstr("ticker: up"));
  EXPECT_EQ(Ctl({"dmesg", "mem1"}).out, "");
  ASSERT_EQ(Ctl({"destroy", "mem1"}).status, 0);
  EXPECT_THAT(Ctl({"dmesg", "mem1"}).err, HasSubstr("not running"));
  ASSERT_EQ(Ctl({"delete", "mem1"}).status, 0);
}

TEST_F(XenkvmdTest, HelpDocumentsEveryVerb) {
  ProcessResult help = Ctl({"--help"});
  EXPECT_EQ(help.status, 0);
  for (const char* verb : {"create", "list", "info", "pause", "unpause", "shutdown", "destroy", "delete", "block-attach",
                           "block-detach", "block-list", "network-attach", "network-detach", "network-list", "console", "evtchn", "events", "reboot", "top", "mem-set",
                           "dmesg", "--json", "--version"}) {
    EXPECT_THAT(help.out, HasSubstr(verb));
  }
}

}  // namespace
}  // namespace xenkvm::api
