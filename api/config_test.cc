#include "api/config.h"
#include "api/lifecycle_policy.h"

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::api {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, JsonConfigWithDefaults) {
  absl::StatusOr<v1::VmConfig> config = ParseConfigText(
      R"({"name": "web1", "memoryMib": 512, "vcpus": 2, "kernel": "/boot/vmlinux", "cmdline": "console=hvc0",
          "xen_version": "4.10"})",
      "web1.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->memory_mib(), 512u);
  EXPECT_TRUE(ValidateVmConfig(*config).ok());
  v1::VmConfig full = WithDefaults(*config);
  EXPECT_EQ(full.accelerator(), "auto");
  EXPECT_EQ(full.huge_pages(), "none");
  EXPECT_EQ(full.xen_max_event_channels(), 4096u);
  ASSERT_EQ(full.consoles_size(), 1);
  EXPECT_EQ(full.consoles(0).kind(), "serial");
  std::vector<std::string> args = VmmArguments(full, "/run/x.sock", "/run/xs.sock");
  EXPECT_THAT(args, ::testing::Contains("0x4000a"));
  EXPECT_THAT(args, ::testing::Contains("/run/x.sock"));
  EXPECT_THAT(args, ::testing::Contains("/run/xs.sock"));
  full.set_xen_version("off");  // no Xen interface: no XenStore to serve
  EXPECT_THAT(VmmArguments(full, "/run/x.sock", "/run/xs.sock"), ::testing::Not(::testing::Contains("/run/xs.sock")));
  EXPECT_THAT(ParseConfigText(R"({"name": "x", "colour": "red"})", "bad.json").status().message(),
              HasSubstr("bad.json: not a valid VM config"));
}

TEST(ConfigTest, XlConfigKeysAndDisks) {
  absl::StatusOr<v1::VmConfig> config = ParseConfigText(R"(
# a guest from a Xen host
name = "db"
type = "pvh"
memory = 1024
vcpus = 4
kernel = "/boot/vmlinux-6.1"
ramdisk = "/boot/initrd.img-6.1"
extra = "root=/dev/xvda ro"
disk = [ 'target=/images/db.img,vdev=xvda,access=rw,cache=none', '/images/data.img,raw,xvdb,ro' ]
accelerator = "emu"
cpu_template = "x86-64-v2"
huge_pages = "2M"
)",
                                                         "db.cfg");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->name(), "db");
  EXPECT_EQ(config->memory_mib(), 1024u);
  EXPECT_EQ(config->vcpus(), 4u);
  EXPECT_EQ(config->cmdline(), "root=/dev/xvda ro");
  EXPECT_EQ(config->initrd(), "/boot/initrd.img-6.1");
  EXPECT_EQ(config->accelerator(), "emu");  // xenkvm's own keys
  EXPECT_EQ(config->cpu_template(), "x86-64-v2");
  EXPECT_EQ(config->huge_pages(), "2M");
  ASSERT_EQ(config->disks_size(), 2);
  EXPECT_EQ(config->disks(0).path(), "/images/db.img");
  EXPECT_EQ(config->disks(0).vdev(), "xvda");
  EXPECT_FALSE(config->disks(0).read_only());
  EXPECT_EQ(config->disks(0).cache(), "none");  // QEMU's key, which xl lacks
  EXPECT_EQ(config->disks(1).vdev(), "xvdb");
  EXPECT_TRUE(config->disks(1).read_only());
  EXPECT_EQ(config->disks(1).cache(), "");
  EXPECT_TRUE(ValidateVmConfig(*config).ok());
  EXPECT_THAT(VmmArguments(*config, "/run/c.sock", ""),
              ::testing::Contains("target=/images/db.img,vdev=xvda,access=rw,cache=none"));
  const std::vector<std::string> db_args = VmmArguments(*config, "/run/c.sock", "");
  auto huge_pages = std::find(db_args.begin(), db_args.end(), "--huge-pages");
  ASSERT_NE(huge_pages, db_args.end());
  ASSERT_NE(huge_pages + 1, db_args.end());
  EXPECT_EQ(*(huge_pages + 1), "2M");
}

TEST(ConfigTest, InitrdMustBeAnAbsolutePathAndReachesTheVmm) {
  v1::VmConfig config;
  config.set_name("a");
  config.set_kernel("/k");
  config.set_initrd("initrd.img");
  EXPECT_THAT(ValidateVmConfig(config).message(), HasSubstr("initrd: \"initrd.img\" must be an absolute path"));
  config.set_initrd("/boot/initrd.img");
  EXPECT_TRUE(ValidateVmConfig(config).ok());
  std::vector<std::string> args = VmmArguments(config, "/run/c.sock", "");
  auto flag = std::find(args.begin(), args.end(), "--initrd");
  ASSERT_NE(flag, args.end());
  EXPECT_EQ(*(flag + 1), "/boot/initrd.img");
}

TEST(ConfigTest, LifecyclePoliciesAsXlNamesThem) {
  absl::StatusOr<v1::VmConfig> config = ParseConfigText(
      "name = \"p\"\nkernel = \"/k\"\non_poweroff = \"restart\"\non_reboot = \"destroy\"\non_crash = \"restart\"\n",
      "p.cfg");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->on_poweroff(), "restart");
  EXPECT_EQ(config->on_reboot(), "destroy");
  EXPECT_EQ(config->on_crash(), "restart");
  EXPECT_TRUE(ValidateVmConfig(*config).ok());
  config->set_on_crash("preserve");
  EXPECT_THAT(ValidateVmConfig(*config).message(), HasSubstr("on_crash: \"preserve\" is not destroy or restart"));
  config->set_on_crash("");
  config->set_on_reboot("bounce");
  EXPECT_THAT(ValidateVmConfig(*config).message(), HasSubstr("on_reboot: \"bounce\""));
}

TEST(LifecyclePolicyTest, TheGuestsOwnEndPicksThePolicyWithXlsDefaults) {
  v1::VmConfig config;
  auto exited = [](int status) { return RunEnd{status, std::nullopt, false, ""}; };
  EXPECT_EQ(PolicyFor(config, exited(0)).action, EndAction::kDestroy);  // on_poweroff
  EXPECT_EQ(PolicyFor(config, exited(4)).action, EndAction::kRestart);  // on_reboot
  EXPECT_STREQ(PolicyFor(config, exited(4)).key, "on_reboot");
  EXPECT_EQ(PolicyFor(config, exited(5)).action, EndAction::kDestroy);  // on_crash
  config.set_on_crash("restart");
  EXPECT_EQ(PolicyFor(config, exited(5)).action, EndAction::kRestart);
  EXPECT_EQ(PolicyFor(config, exited(2)).action, EndAction::kNone);  // never built
  EXPECT_EQ(PolicyFor(config, RunEnd{std::nullopt, 9, false, ""}).action, EndAction::kNone);  // the VMM was killed
  EXPECT_EQ(PolicyFor(config, RunEnd{4, std::nullopt, true, ""}).action, EndAction::kNone);  // destroyed
  RestartBudget budget;
  const absl::Time start = absl::Now();
  for (int i = 0; i < RestartBudget::kMaxRestarts; ++i) EXPECT_TRUE(budget.Take(start + absl::Seconds(i)));
  EXPECT_FALSE(budget.Take(start + absl::Seconds(10)));
  EXPECT_TRUE(budget.Take(start + absl::Seconds(61)));  // the first one has left the window
}

TEST(ConfigTest, XlUnsupportedKeysAreReportedNotIgnored) {
  absl::StatusOr<v1::VmConfig> config =
      ParseConfigText("name='a'\nkernel='/k'\nvif=['bridge=xenbr0']\non_watchdog='restart'\n", "a.cfg");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("unsupported xl.cfg keys: on_watchdog"));
  EXPECT_THAT(ParseConfigText("name='a'\ntype='pv'\n", "a.cfg").status().message(), HasSubstr("not PV"));
  EXPECT_THAT(ParseConfigText("name='a'\nmemory='lots'\n", "a.cfg").status().message(), HasSubstr("memory: \"lots\""));
  EXPECT_THAT(ParseConfigText("name='a\n", "a.cfg").status().message(), HasSubstr("unterminated string"));
  EXPECT_THAT(ParseConfigText("disk=['/x.qcow2,qcow2,xvda,rw']\n", "a.cfg").status().message(),
              HasSubstr("only raw images"));
  EXPECT_THAT(ParseConfigText("disk=['target=/x.img,cache=unsafe']\n", "a.cfg").status().message(),
              HasSubstr("cache=unsafe is not writeback"));
}

// xl's vif = [...]: each spec through the one vif parser; a MAC chosen at definition when none
// is given; the VMM gets them as --net in the same syntax.
TEST(ConfigTest, XlVifsBecomeNetworks) {
  absl::StatusOr<v1::VmConfig> config = ParseConfigText(
      "name='n'\nkernel='/k'\nvif=['mac=00:16:3e:0a:0b:0c,bridge=xenbr0', 'vifname=tap7,mtu=9000', '']\n", "n.cfg");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->networks_size(), 3);
  EXPECT_EQ(config->networks(0).mac(), "00:16:3e:0a:0b:0c");
  EXPECT_EQ(config->networks(0).bridge(), "xenbr0");
  EXPECT_EQ(config->networks(1).tap(), "tap7");
  EXPECT_EQ(config->networks(1).mtu(), 9000u);
  EXPECT_THAT(config->networks(2).mac(), ::testing::StartsWith("00:16:3e:"));  // generated, Xen's OUI
  ASSERT_TRUE(ValidateVmConfig(*config).ok());
  const std::vector<std::string> args = VmmArguments(WithDefaults(*config), "/c", "");
  EXPECT_THAT(args, ::testing::Contains("mac=00:16:3e:0a:0b:0c,bridge=xenbr0"));
  EXPECT_THAT(args, ::testing::Contains(::testing::HasSubstr("vifname=tap7,mtu=9000")));

  EXPECT_THAT(ParseConfigText("vif=['mac=01:00:5e:00:00:01']\n", "a.cfg").status().message(), HasSubstr("multicast"));
  EXPECT_THAT(ParseConfigText("vif=['model=e1000']\n", "a.cfg").status().message(), HasSubstr("model=e1000"));
  EXPECT_THAT(ParseConfigText("vif=['mtu=20']\n", "a.cfg").status().message(), HasSubstr("68 to 65535"));
  // xl's rate (what the guest sends) and xenkvm's rx-rate, kept in bytes and microseconds.
  absl::StatusOr<v1::VmConfig> limited =
      ParseConfigText("name='r'\nkernel='/k'\nvif=['rate=10Mb/s@20ms,rx-rate=5MB/s']\n", "r.cfg");
  ASSERT_TRUE(limited.ok()) << limited.status();
  EXPECT_EQ(limited->networks(0).rate(), "1250000B/s@20000us");
  EXPECT_EQ(limited->networks(0).rx_rate(), "5000000B/s@50000us");
  EXPECT_TRUE(ValidateVmConfig(*limited).ok());
  for (const char* bad : {"rate=10Mb", "rate=fast/s", "rate=10Mb/s@1h", "rate=0B/s", "rate=1Mb/s@2ms@3ms"}) {
    EXPECT_THAT(ParseConfigText(absl::StrCat("vif=['", bad, "']\n"), "a.cfg").status().message(),
                HasSubstr("is not RATE/s[@INTERVAL]")) << bad;
  }
  v1::VmConfig json;
  json.set_name("j");
  json.set_kernel("/k");
  json.add_networks()->set_mac("zz:16:3e:00:00:01");
  EXPECT_THAT(ValidateVmConfig(json).message(), HasSubstr("networks[0]"));
  json.mutable_networks(0)->set_mac("");
  EXPECT_THAT(WithDefaults(json).networks(0).mac(), ::testing::StartsWith("00:16:3e:"));
}

TEST(ConfigTest, ValidationNamesTheField) {
  v1::VmConfig config;
  config.set_name("ok");
  config.set_kernel("/boot/k");
  EXPECT_TRUE(ValidateVmConfig(config).ok());
  auto error = [](v1::VmConfig c) { return std::string(ValidateVmConfig(c).message()); };
  v1::VmConfig c = config;
  c.set_name("bad name!");
  EXPECT_THAT(error(c), HasSubstr("name:"));
  c = config;
  c.set_memory_mib(1);
  EXPECT_THAT(error(c), HasSubstr("memory_mib: 1 is out of range"));
  c = config;
  c.set_vcpus(33);
  EXPECT_THAT(error(c), HasSubstr("vcpus: 33"));
  c = config;
  c.set_kernel("relative/k");
  EXPECT_THAT(error(c), HasSubstr("kernel:"));
  c = config;
  c.set_accelerator("xen");
  EXPECT_THAT(error(c), HasSubstr("accelerator:"));
  c = config;
  c.set_cpu_template("skylake");
  EXPECT_THAT(error(c), HasSubstr("cpu_template: cpu template \"skylake\" is unknown"));
  c.set_cpu_template("x86-64-v2");
  EXPECT_TRUE(ValidateVmConfig(c).ok());
  c = config;
  c.set_huge_pages("1G");
  EXPECT_THAT(error(c), HasSubstr("huge_pages: huge-pages: unknown page size \"1G\"; use none or 2M"));
  c.set_huge_pages("2M");
  c.set_memory_mib(255);
  EXPECT_THAT(error(c), HasSubstr("memory_mib: 255 is not a whole number of 2 MiB huge pages"));
  c.set_memory_mib(256);
  EXPECT_TRUE(ValidateVmConfig(c).ok());
  c = config;
  c.set_xen_version("four");
  EXPECT_THAT(error(c), HasSubstr("xen_version:"));
  c = config;
  c.set_xen_max_event_channels(200000);
  EXPECT_THAT(error(c), HasSubstr("xen_max_event_channels:"));
  c = config;
  c.add_consoles()->set_kind("vga");
  EXPECT_THAT(error(c), HasSubstr("consoles[0].kind"));
  c = config;
  c.add_consoles()->set_kind("xen");
  EXPECT_TRUE(ValidateVmConfig(c).ok());
  c.set_xen_version("off");
  EXPECT_THAT(error(c), HasSubstr("consoles[0].kind: xen needs the Xen interface"));
  c = config;
  c.add_disks()->set_path("img");
  EXPECT_THAT(error(c), HasSubstr("disks[0].path"));
  c = config;
  v1::DiskConfig* disk = c.add_disks();
  disk->set_path("/img");
  disk->set_cache("directsync");
  EXPECT_THAT(error(c), HasSubstr("disks[0].cache: cache=directsync is not writeback"));
}

TEST(ConfigTest, XenVersions) {
  EXPECT_EQ(*ParseXenVersion("4.17"), 0x40011u);
  EXPECT_EQ(*ParseXenVersion("0x4000a"), 0x4000au);
  EXPECT_EQ(*ParseXenVersion("off"), 0u);
  EXPECT_FALSE(ParseXenVersion("2.0").ok());
  EXPECT_FALSE(ParseXenVersion("4").ok());
}

}  // namespace
}  // namespace xenkvm::api
