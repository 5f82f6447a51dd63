#include "vmm/vm_config.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "components/block/image.h"
#include "components/xen/version.h"

namespace xenkvm::vmm {

absl::StatusOr<AcceleratorKind> ParseAcceleratorKind(const std::string& name) {
  if (name == "auto") return AcceleratorKind::kAuto;
  if (name == "kvm") return AcceleratorKind::kKvm;
  if (name == "emu") return AcceleratorKind::kEmu;
  return absl::InvalidArgumentError(
      absl::StrCat("accelerator: unknown accelerator \"", name, "\"; use kvm, emu or auto"));
}

const char* AcceleratorKindName(AcceleratorKind kind) {
  switch (kind) {
    case AcceleratorKind::kAuto:
      return "auto";
    case AcceleratorKind::kKvm:
      return "kvm";
    case AcceleratorKind::kEmu:
      return "emu";
  }
  return "?";
}

absl::Status Validate(const VmConfig& config) {
  if (config.kernel.empty()) return absl::InvalidArgumentError("kernel: no kernel given (an ELF vmlinux or a bzImage with a Xen PVH entry)");
  if (config.memory_mib < 2 || config.memory_mib > 1024 * 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("memory: %u MiB is out of range (2 MiB to 1 TiB)", config.memory_mib));
  }
  if (config.ram_pages == memory::RamPages::k2MiB && config.memory_mib % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "memory: %u MiB is not a whole number of 2 MiB huge pages (--huge-pages 2M); use %u", config.memory_mib,
        config.memory_mib + 1));
  }
  if (config.vcpus < 1 || config.vcpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vcpus: %u is out of range (1 to %u)", config.vcpus, kMaxVcpus));
  }
  if (absl::Status version = xen::CheckXenVersion(config.xen_version); !version.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("xen-version: ", version.message()));
  }
  if (config.xen_max_event_channels < 64 || config.xen_max_event_channels > 131072) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "xen-max-evtchn: %u is out of range (64 to 131072; 2-level guests get at most 4096)", config.xen_max_event_channels));
  }
  if (!config.disks.empty() && config.xen_version == 0) {
    return absl::InvalidArgumentError("disk: xen-disk devices need the Xen interface (--xen-version is off)");
  }
  if (!config.networks.empty() && config.xen_version == 0) {
    return absl::InvalidArgumentError("vif: xen-net devices need the Xen interface (--xen-version is off)");
  }
  std::set<uint32_t> devices;
  for (const xenbus::XenDiskConfig& disk : config.disks) {
    absl::StatusOr<uint32_t> devid = xenbus::ParseVirtualDevice(disk.vdev);
    if (!devid.ok()) return absl::InvalidArgumentError(absl::StrCat("disk: ", devid.status().message()));
    if (!devices.insert(*devid).second) {
      return absl::InvalidArgumentError(absl::StrCat("disk: vdev ", disk.vdev, " is given twice"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<xenbus::XenDiskConfig> ParseDiskSpec(const std::string& spec) {
  xenbus::XenDiskConfig disk;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    const size_t equals = item.find('=');
    if (equals == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("disk \"", spec, "\": \"", std::string(item), "\" is not key=value (target=, vdev=, access=)"));
    }
    const std::string key(item.substr(0, equals));
    const std::string value(item.substr(equals + 1));
    if (key == "target" || key == "path") {
      disk.path = value;
    } else if (key == "vdev") {
      disk.vdev = value;
    } else if (key == "access") {
      if (value != "r" && value != "ro" && value != "w" && value != "rw") {
        return absl::InvalidArgumentError(absl::StrCat("disk \"", spec, "\": access=", value, " is not r, ro, w or rw"));
      }
      disk.read_only = value[0] == 'r' && value != "rw";
    } else if (key == "cache") {
      absl::StatusOr<block::CacheMode> cache = block::ParseCacheMode(value);
      if (!cache.ok()) return absl::InvalidArgumentError(absl::StrCat("disk \"", spec, "\": ", cache.status().message()));
      disk.cache = *cache;
    } else if (key == "features") {
      // What to offer, '+'-separated: flush, discard, persistent, indirect (default: all).
      disk.flush = disk.discard = disk.persistent_grants = false;
      disk.max_indirect_segments = 0;
      for (absl::string_view feature : absl::StrSplit(value, '+', absl::SkipEmpty())) {
        if (feature == "flush") {
          disk.flush = true;
        } else if (feature == "discard") {
          disk.discard = true;
        } else if (feature == "persistent") {
          disk.persistent_grants = true;
        } else if (feature == "indirect") {
          disk.max_indirect_segments = 256;
        } else {
          return absl::InvalidArgumentError(absl::StrCat("disk \"", spec, "\": feature \"", std::string(feature),
                                                         "\" is not flush, discard, persistent or indirect"));
        }
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("disk \"", spec, "\": unknown key \"", key, "\" (target, vdev, access, features, cache)"));
    }
  }
  if (disk.path.empty()) return absl::InvalidArgumentError(absl::StrCat("disk \"", spec, "\": no target=PATH"));
  return disk;
}

}  // namespace xenkvm::vmm
