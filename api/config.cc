#include "api/config.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "components/base/status.h"
#include "components/net/mac_address.h"
#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xenbus/vdev.h"
#include "components/xenbus/vif_spec.h"
#include "google/protobuf/util/json_util.h"
#include "components/accel/cpu_template.h"
#include "components/xen/version.h"

namespace xenkvm::api {
namespace {

absl::Status Invalid(const std::string& source, const std::string& why) {
  return absl::InvalidArgumentError(source.empty() ? why : absl::StrCat(source, ": ", why));
}

// xl.cfg values: 'string', "string", number, or [ value, ... ].
struct XlValue {
  bool is_list = false;
  std::vector<std::string> items;  // one for a scalar
};

absl::StatusOr<std::vector<std::pair<std::string, XlValue>>> ParseXl(const std::string& text,
                                                                    const std::string& source) {
  std::vector<std::pair<std::string, XlValue>> entries;
  size_t at = 0;
  int line = 1;
  auto skip_space = [&] {
    while (at < text.size()) {
      if (text[at] == '#') {
        while (at < text.size() && text[at] != '\n') ++at;
      } else if (std::isspace(static_cast<unsigned char>(text[at])) || text[at] == ';') {
        if (text[at] == '\n') ++line;
        ++at;
      } else {
        break;
      }
    }
  };
  auto scalar = [&]() -> absl::StatusOr<std::string> {
    if (at < text.size() && (text[at] == '\'' || text[at] == '"')) {
      char quote = text[at++];
      size_t end = text.find(quote, at);
      if (end == std::string::npos) return Invalid(source, absl::StrFormat("line %d: unterminated string", line));
      std::string value = text.substr(at, end - at);
      at = end + 1;
      return value;
    }
    size_t start = at;
    while (at < text.size() && (std::isalnum(static_cast<unsigned char>(text[at])) || text[at] == '.' ||
                                text[at] == '-' || text[at] == '_' || text[at] == 'x')) {
      ++at;
    }
    if (start == at) return Invalid(source, absl::StrFormat("line %d: expected a value", line));
    return text.substr(start, at - start);
  };
  skip_space();
  while (at < text.size()) {
    size_t start = at;
    while (at < text.size() && (std::isalnum(static_cast<unsigned char>(text[at])) || text[at] == '_')) ++at;
    if (start == at) return Invalid(source, absl::StrFormat("line %d: expected a key", line));
    std::string key = text.substr(start, at - start);
    skip_space();
    if (at >= text.size() || text[at] != '=') {
      return Invalid(source, absl::StrFormat("line %d: expected '=' after %s", line, key));
    }
    ++at;
    skip_space();
    XlValue value;
    if (at < text.size() && text[at] == '[') {
      value.is_list = true;
      ++at;
      skip_space();
      while (at < text.size() && text[at] != ']') {
        absl::StatusOr<std::string> item = scalar();
        if (!item.ok()) return item.status();
        value.items.push_back(*item);
        skip_space();
        if (at < text.size() && text[at] == ',') ++at;
        skip_space();
      }
      if (at >= text.size()) return Invalid(source, absl::StrFormat("line %d: unterminated list for %s", line, key));
      ++at;
    } else {
      absl::StatusOr<std::string> item = scalar();
      if (!item.ok()) return item.status();
      value.items.push_back(*item);
    }
    entries.emplace_back(key, value);
    skip_space();
  }
  return entries;
}

// One xl disk spec: 'target=PATH,vdev=xvda,access=rw,format=raw' or positional 'PATH,FORMAT,VDEV,ACCESS'.
absl::StatusOr<v1::DiskConfig> ParseXlDisk(const std::string& spec, const std::string& source) {
  v1::DiskConfig disk;
  std::vector<std::string> positional;
  for (absl::string_view part : absl::StrSplit(spec, ',')) {
    std::string item(absl::StripAsciiWhitespace(part));
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      positional.push_back(item);
      continue;
    }
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "target") {
      disk.set_path(value);
    } else if (key == "vdev") {
      disk.set_vdev(value);
    } else if (key == "access" || key == "mode") {
      if (value != "rw" && value != "w" && value != "ro" && value != "r") {
        return Invalid(source, absl::StrCat("disk: access \"", value, "\" is not rw or ro"));
      }
      disk.set_read_only(value == "ro" || value == "r");
    } else if (key == "format") {
      if (value != "raw") return Invalid(source, absl::StrCat("disk: format \"", value, "\": only raw images are supported"));
    } else if (key == "devtype") {
      if (value != "disk") return Invalid(source, absl::StrCat("disk: devtype \"", value, "\": only disk is supported"));
    } else if (key == "cache") {  // QEMU's name; not in xl
      if (absl::StatusOr<block::CacheMode> cache = block::ParseCacheMode(value); !cache.ok()) {
        return Invalid(source, absl::StrCat("disk: ", cache.status().message()));
      }
      disk.set_cache(value);
    } else {
      return Invalid(source, absl::StrCat("disk: unsupported key \"", key,
                                          "\" (supported: target, vdev, access, format, devtype, cache)"));
    }
  }
  // Positional: target, format, vdev, access (xl's legacy order).
  if (!positional.empty()) {
    if (positional.size() > 4) return Invalid(source, absl::StrCat("disk: too many positional fields in \"", spec, "\""));
    std::string target = positional[0];
    if (absl::StartsWith(target, "phy:") || absl::StartsWith(target, "file:")) target = target.substr(target.find(':') + 1);
    disk.set_path(target);
    if (positional.size() > 1 && !positional[1].empty() && positional[1] != "raw") {
      // The old three-field form is PATH,VDEV,ACCESS.
      if (positional.size() == 3) {
        disk.set_vdev(positional[1]);
        disk.set_read_only(positional[2] == "r" || positional[2] == "ro");
        return disk;
      }
      return Invalid(source, absl::StrCat("disk: format \"", positional[1], "\": only raw images are supported"));
    }
    if (positional.size() > 2) disk.set_vdev(positional[2]);
    if (positional.size() > 3) disk.set_read_only(positional[3] == "r" || positional[3] == "ro");
  }
  if (disk.path().empty()) return Invalid(source, absl::StrCat("disk: no target in \"", spec, "\""));
  return disk;
}

absl::StatusOr<v1::VmConfig> FromXl(const std::string& text, const std::string& source) {
  absl::StatusOr<std::vector<std::pair<std::string, XlValue>>> entries = ParseXl(text, source);
  if (!entries.ok()) return entries.status();
  v1::VmConfig config;
  std::vector<std::string> unsupported;
  for (const auto& [key, value] : *entries) {
    const std::string& first = value.items.empty() ? std::string() : value.items[0];
    auto number = [&](auto* out) -> absl::Status {
      if (value.is_list || !absl::SimpleAtoi(first, out)) return Invalid(source, absl::StrCat(key, ": \"", first, "\" is not a number"));
      return absl::OkStatus();
    };
    if (key == "name") {
      config.set_name(first);
    } else if (key == "memory") {
      uint64_t mib = 0;
      if (absl::Status s = number(&mib); !s.ok()) return s;
      config.set_memory_mib(mib);
    } else if (key == "vcpus") {
      uint32_t vcpus = 0;
      if (absl::Status s = number(&vcpus); !s.ok()) return s;
      config.set_vcpus(vcpus);
    } else if (key == "kernel") {
      config.set_kernel(first);
    } else if (key == "ramdisk") {
      config.set_initrd(first);
    } else if (key == "extra" || key == "cmdline") {
      config.set_cmdline(config.cmdline().empty() ? first : absl::StrCat(config.cmdline(), " ", first));
    } else if (key == "type" || key == "builder") {
      if (first != "pvh" && first != "hvm") {
        return Invalid(source, absl::StrCat(key, ": \"", first, "\": xenkvm runs PVH and HVM guests (by the PVH entry), not PV"));
      }
    } else if (key == "on_poweroff") {
      config.set_on_poweroff(first);
    } else if (key == "on_reboot") {
      config.set_on_reboot(first);
    } else if (key == "on_crash") {
      config.set_on_crash(first);
    } else if (key == "accelerator") {  // xenkvm's own keys (xl has neither)
      config.set_accelerator(first);
    } else if (key == "cpu_template") {
      config.set_cpu_template(first);
    } else if (key == "huge_pages") {
      config.set_huge_pages(first);
    } else if (key == "disk") {
      for (const std::string& spec : value.items) {
        absl::StatusOr<v1::DiskConfig> disk = ParseXlDisk(spec, source);
        if (!disk.ok()) return disk.status();
        *config.add_disks() = *disk;
      }
    } else if (key == "vif") {
      for (const std::string& spec : value.items) {
        absl::StatusOr<xenbus::XenNetConfig> vif =
            xenbus::ParseVifSpec(spec, static_cast<uint32_t>(config.networks_size()));
        if (!vif.ok()) return Invalid(source, std::string(vif.status().message()));
        v1::NetworkConfig* network = config.add_networks();
        network->set_mac(net::FormatMac(vif->mac));
        network->set_bridge(vif->bridge);
        network->set_tap(vif->tap);
        network->set_mtu(vif->mtu);
        if (vif->tx_rate) network->set_rate(xenbus::FormatVifRate(*vif->tx_rate));
        if (vif->rx_rate) network->set_rx_rate(xenbus::FormatVifRate(*vif->rx_rate));
      }
    } else {
      unsupported.push_back(key);
    }
  }
  if (!unsupported.empty()) {
    return Invalid(source, absl::StrCat("unsupported xl.cfg keys: ", absl::StrJoin(unsupported, ", "),
                                        " (xenkvm takes name, memory, vcpus, kernel, ramdisk, extra, cmdline, type, disk, on_poweroff, on_reboot, "
                                        "on_crash, and its own accelerator, cpu_template, huge_pages)"));
  }
  return config;
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 63 || !std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<uint32_t> ParseXenVersion(const std::string& text) {
  absl::StatusOr<uint32_t> version = xen::ParseXenVersion(text);
  if (!version.ok()) return absl::InvalidArgumentError(absl::StrCat("xen_version: ", version.status().message()));
  return version;
}

absl::StatusOr<v1::VmConfig> ParseConfigText(const std::string& text, const std::string& source) {
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    v1::VmConfig config;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    auto status = google::protobuf::util::JsonStringToMessage(text, &config, options);
    if (!status.ok()) return Invalid(source, absl::StrCat("not a valid VM config: ", std::string(status.message())));
    return config;
  }
  return FromXl(text, source);
}

absl::StatusOr<v1::VmConfig> ReadConfigFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open config file ", path));
  std::stringstream text;
  text << file.rdbuf();
  if (text.str().size() > (1 << 20)) return absl::InvalidArgumentError(absl::StrCat(path, ": larger than 1 MiB"));
  return ParseConfigText(text.str(), path);
}

absl::Status ValidateVmConfig(const v1::VmConfig& config) {
  if (!ValidName(config.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: \"", config.name(), "\" must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"));
  }
  if (config.memory_mib() != 0 && (config.memory_mib() < 2 || config.memory_mib() > 1024 * 1024)) {
    return absl::InvalidArgumentError(absl::StrFormat("memory_mib: %u is out of range (2 to 1048576)", config.memory_mib()));
  }
  if (!config.huge_pages().empty()) {
    absl::StatusOr<memory::RamPages> pages = memory::ParseHugePages(config.huge_pages());
    if (!pages.ok()) return absl::InvalidArgumentError(absl::StrCat("huge_pages: ", pages.status().message()));
    if (*pages == memory::RamPages::k2MiB && config.memory_mib() % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("memory_mib: %u is not a whole number of 2 MiB huge pages (huge_pages \"2M\")", config.memory_mib()));
    }
  }
  if (config.vcpus() > 32) {
    return absl::InvalidArgumentError(absl::StrFormat("vcpus: %u is out of range (1 to 32)", config.vcpus()));
  }
  if (config.kernel().empty()) return absl::InvalidArgumentError("kernel: no kernel given (an ELF vmlinux or a bzImage with a Xen PVH entry)");
  if (config.kernel()[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("kernel: \"", config.kernel(), "\" must be an absolute path"));
  }
  if (!config.initrd().empty() && config.initrd()[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("initrd: \"", config.initrd(), "\" must be an absolute path"));
  }
  if (config.cmdline().size() > 4095 || config.cmdline().find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("cmdline: longer than 4095 bytes or contains a NUL");
  }
  const std::string& accelerator = config.accelerator();
  if (!accelerator.empty() && accelerator != "auto" && accelerator != "kvm" && accelerator != "emu") {
    return absl::InvalidArgumentError(absl::StrCat("accelerator: \"", accelerator, "\" is not auto, kvm or emu"));
  }
  if (!config.xen_version().empty()) {
    if (absl::StatusOr<uint32_t> version = ParseXenVersion(config.xen_version()); !version.ok()) return version.status();
  }
  if (absl::StatusOr<accel::CpuTemplate> cpu = accel::ParseCpuTemplate(config.cpu_template()); !cpu.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_template: ", cpu.status().message()));
  }
  for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"on_poweroff", &config.on_poweroff()},
                                     {"on_reboot", &config.on_reboot()},
                                     {"on_crash", &config.on_crash()}}) {
    if (value->empty() || *value == "destroy" || *value == "restart") continue;
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", *value, "\" is not destroy or restart",
        *value == "preserve" || *value == "rename-restart" || absl::StartsWith(*value, "coredump")
            ? " (xl's other actions keep the dead domain around; a xenkvm-vmm ends with its guest, its console log kept)"
            : ""));
  }
  if (config.xen_max_event_channels() != 0 &&
      (config.xen_max_event_channels() < 64 || config.xen_max_event_channels() > 131072)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("xen_max_event_channels: %u is out of range (64 to 131072; 2-level guests get at most 4096)", config.xen_max_event_channels()));
  }
  if (config.xen_gnttab_max_frames() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrFormat("xen_gnttab_max_frames: %u is out of range (1 to 4096)", config.xen_gnttab_max_frames()));
  }
  if (config.xen_evtchn_max_pirq() != 0 && (config.xen_evtchn_max_pirq() < 16 || config.xen_evtchn_max_pirq() > 65535)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("xen_evtchn_max_pirq: %u is out of range (16 to 65535)", config.xen_evtchn_max_pirq()));
  }
  for (int i = 0; i < config.consoles_size(); ++i) {
    const std::string& kind = config.consoles(i).kind();
    if (kind != "serial" && kind != "xen") {
      return absl::InvalidArgumentError(absl::StrFormat("consoles[%d].kind: \"%s\" is not serial or xen", i, kind));
    }
    if (kind == "xen" && ParseXenVersion(config.xen_version()).value_or(1) == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("consoles[%d].kind: xen needs the Xen interface, and xen_version is \"off\"", i));
    }
  }
  for (int i = 0; i < config.disks_size(); ++i) {
    const v1::DiskConfig& disk = config.disks(i);
    XENKVM_RETURN_IF_ERROR(ValidateDisk(disk, absl::StrFormat("disks[%d]", i)));
    for (int j = 0; j < i; ++j) {
      if (!disk.vdev().empty() && config.disks(j).vdev() == disk.vdev()) {
        return absl::InvalidArgumentError(absl::StrFormat("disks[%d].vdev: %s is given twice", i, disk.vdev()));
      }
    }
  }
  if (config.disks_size() > 0 && ParseXenVersion(config.xen_version()).value_or(1) == 0) {
    return absl::InvalidArgumentError("disks: xen-disk devices need the Xen interface, and xen_version is \"off\"");
  }
  for (int i = 0; i < config.networks_size(); ++i) {
    XENKVM_RETURN_IF_ERROR(ValidateNetwork(config.networks(i), absl::StrFormat("networks[%d]", i)));
  }
  if (config.networks_size() > 0 && ParseXenVersion(config.xen_version()).value_or(1) == 0) {
    return absl::InvalidArgumentError("networks: xen-net devices need the Xen interface, and xen_version is \"off\"");
  }
  return absl::OkStatus();
}

absl::Status ValidateDisk(const v1::DiskConfig& disk, const std::string& field) {
  if (disk.path().empty() || disk.path()[0] != '/') {
    return absl::InvalidArgumentError(absl::StrFormat("%s.path: \"%s\" must be an absolute path", field, disk.path()));
  }
  if (!disk.vdev().empty()) {
    if (absl::StatusOr<uint32_t> devid = xenbus::ParseVirtualDevice(disk.vdev()); !devid.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s.vdev: %s", field, devid.status().message()));
    }
  }
  if (!disk.cache().empty()) {
    if (absl::StatusOr<block::CacheMode> cache = block::ParseCacheMode(disk.cache()); !cache.ok()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s.cache: %s", field, cache.status().message()));
    }
  }
  for (const std::string& feature : disk.features()) {
    if (feature != "flush" && feature != "discard" && feature != "persistent" && feature != "indirect") {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.features: \"%s\" is not flush, discard, persistent or indirect", field, feature));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateNetwork(const v1::NetworkConfig& network, const std::string& field) {
  // Through the one vif parser, so the API's networks and xl.cfg's vif agree.
  if (absl::StatusOr<xenbus::XenNetConfig> vif = xenbus::ParseVifSpec(VifSpec(network), 0); !vif.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", vif.status().message()));
  }
  if (network.tap().size() > 15) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".tap: \"", network.tap(), "\" is longer than 15 bytes"));
  }
  return absl::OkStatus();
}

std::string VifSpec(const v1::NetworkConfig& network) {
  std::vector<std::string> keys;
  if (!network.mac().empty()) keys.push_back(absl::StrCat("mac=", network.mac()));
  if (!network.bridge().empty()) keys.push_back(absl::StrCat("bridge=", network.bridge()));
  if (!network.tap().empty()) keys.push_back(absl::StrCat("vifname=", network.tap()));
  if (network.mtu() != 0) keys.push_back(absl::StrCat("mtu=", network.mtu()));
  if (!network.rate().empty()) keys.push_back(absl::StrCat("rate=", network.rate()));
  if (!network.rx_rate().empty()) keys.push_back(absl::StrCat("rx-rate=", network.rx_rate()));
  return absl::StrJoin(keys, ",");
}

v1::VmConfig WithDefaults(v1::VmConfig config) {
  if (config.memory_mib() == 0) config.set_memory_mib(256);
  if (config.vcpus() == 0) config.set_vcpus(1);
  if (config.accelerator().empty()) config.set_accelerator("auto");
  if (config.huge_pages().empty()) config.set_huge_pages("none");
  if (config.xen_version().empty()) config.set_xen_version("4.17");
  if (config.xen_max_event_channels() == 0) config.set_xen_max_event_channels(4096);
  if (config.xen_gnttab_max_frames() == 0) config.set_xen_gnttab_max_frames(64);
  if (config.xen_evtchn_max_pirq() == 0) config.set_xen_evtchn_max_pirq(256);
  if (config.consoles_size() == 0) config.add_consoles()->set_kind("serial");
  // A vif's MAC is chosen once, when the VM is defined, as xl does at create.
  for (v1::NetworkConfig& network : *config.mutable_networks()) {
    if (network.mac().empty()) network.set_mac(net::FormatMac(net::GenerateXenMac()));
  }
  // Disks without a vdev take the next free xvdX, as xl does.
  std::set<std::string> used;
  for (const v1::DiskConfig& disk : config.disks()) used.insert(disk.vdev());
  char next = 'a';
  for (v1::DiskConfig& disk : *config.mutable_disks()) {
    while (disk.vdev().empty() && next <= 'z') {
      const std::string vdev = std::string("xvd") + next++;
      if (used.insert(vdev).second) disk.set_vdev(vdev);
    }
  }
  return config;
}

const char* VmStateName(v1::VmState state) {
  switch (state) {
    case v1::VM_STATE_CREATED:
      return "created";
    case v1::VM_STATE_RUNNING:
      return "running";
    case v1::VM_STATE_PAUSED:
      return "paused";
    case v1::VM_STATE_SHUTDOWN:
      return "shutdown";
    case v1::VM_STATE_CRASHED:
      return "crashed";
    default:
      return "unknown";
  }
}

std::vector<std::string> VmmArguments(const v1::VmConfig& config, const std::string& control_socket,
                                      const std::string& xenstore_socket) {
  uint32_t version = ParseXenVersion(config.xen_version()).value_or(0x40011);
  std::vector<std::string> args = {
      "--name", config.name(),
      "--kernel", config.kernel(),
      "--memory", absl::StrCat(config.memory_mib()),
      "--huge-pages", config.huge_pages().empty() ? std::string("none") : config.huge_pages(),
      "--vcpus", absl::StrCat(config.vcpus()),
      "--cmdline", config.cmdline(),
      "--initrd", config.initrd(),
      "--accel", config.accelerator(),
      "--cpu-template", config.cpu_template().empty() ? std::string("host") : config.cpu_template(),
      "--xen-version", version == 0 ? std::string("off") : absl::StrFormat("%#x", version),
      "--xen-max-evtchn", absl::StrCat(config.xen_max_event_channels()),
      "--control-socket", control_socket,
  };
  for (const v1::DiskConfig& disk : config.disks()) {
    std::string spec = absl::StrCat("target=", disk.path(), ",vdev=", disk.vdev(), ",access=", disk.read_only() ? "ro" : "rw");
    if (disk.features_size() > 0) absl::StrAppend(&spec, ",features=", absl::StrJoin(disk.features(), "+"));
    if (!disk.cache().empty()) absl::StrAppend(&spec, ",cache=", disk.cache());
    args.push_back("--disk");
    args.push_back(spec);
  }
  for (const v1::NetworkConfig& network : config.networks()) {
    args.push_back("--net");
    args.push_back(VifSpec(network));
  }
  if (version != 0 && !xenstore_socket.empty()) {
    args.push_back("--xenstore-socket");
    args.push_back(xenstore_socket);
  }
  return args;
}

}  // namespace xenkvm::api
