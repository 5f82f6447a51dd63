#include "components/xen/xenstore/domain.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace xenkvm::xen::xenstore {
namespace {

// A privileged client for the duration of one toolstack operation.
class Toolstack {
 public:
  explicit Toolstack(Store& store) : store_(store), client_(store.Connect(0, true, nullptr)) {}
  ~Toolstack() { store_.Disconnect(client_); }

  absl::Status Write(const std::string& path, std::string_view value, const Permissions& permissions) {
    Status written = store_.Write(client_, 0, path, value);
    if (written.ok()) {
      // Only when they differ: every change fires the node's watches.
      Result<Permissions> now = store_.GetPermissions(client_, 0, path);
      if (!now.ok() || now.value() != permissions) written = store_.SetPermissions(client_, 0, path, permissions);
    }
    if (!written.ok()) {
      return absl::InternalError(absl::StrCat("xenstore: writing ", path, ": ", ErrorName(written.error())));
    }
    return absl::OkStatus();
  }
  Result<std::string> Read(const std::string& path) { return store_.Read(client_, 0, path); }

 private:
  Store& store_;
  Store::ClientId client_;
};

}  // namespace

absl::Status CreateDomain(Store& store, const DomainInfo& domain) {
  const Permissions read_only{{0, Access::kNone}, {domain.domid, Access::kRead}};
  const Permissions guest_owned{{domain.domid, Access::kNone}};
  struct Entry {
    std::string path;  // relative to the home; "" is the home
    std::string value;
    const Permissions* permissions;
  };
  std::vector<Entry> entries = {
      {"", "", &read_only},
      {"name", domain.name, &read_only},
      {"domid", absl::StrCat(domain.domid), &read_only},
      {"memory/static-max", absl::StrCat(domain.memory_kib), &read_only},
      {"memory/target", absl::StrCat(domain.memory_kib), &read_only},
      {"control", "", &read_only},
      {"control/platform-feature-multiprocessor-suspend", "1", &read_only},
      {"device", "", &read_only},
  };
  for (uint32_t cpu = 0; cpu < domain.vcpus; ++cpu) {
    entries.push_back({absl::StrCat("cpu/", cpu, "/availability"), "online", &read_only});
  }
  for (const char* node : {"control/shutdown", "control/sysrq", "control/feature-poweroff", "control/feature-reboot",
                           "control/feature-suspend", "control/feature-s3", "control/feature-s4", "data", "drivers",
                           "error", "feature", "attr"}) {
    entries.push_back({node, "", &guest_owned});
  }
  if (domain.console) {
    entries.push_back({"console", "", &read_only});
    entries.push_back({"console/ring-ref", absl::StrCat(domain.console->ring_gfn), &read_only});
    entries.push_back({"console/port", absl::StrCat(domain.console->port), &read_only});
    entries.push_back({"console/type", "xenconsoled", &read_only});
    entries.push_back({"console/limit", "1048576", &read_only});
  }
  Toolstack toolstack(store);
  const std::string home = Store::DomainPath(domain.domid);
  for (const Entry& entry : entries) {
    const std::string path = entry.path.empty() ? home : absl::StrCat(home, "/", entry.path);
    if (absl::Status written = toolstack.Write(path, entry.value, *entry.permissions); !written.ok()) return written;
  }
  store.IntroduceDomain(domain.domid);
  return absl::OkStatus();
}

absl::Status RequestShutdown(Store& store, uint32_t domid, std::string_view reason) {
  if (reason != "poweroff" && reason != "reboot" && reason != "halt" && reason != "suspend" && reason != "s3") {
    return absl::InvalidArgumentError(absl::StrCat("shutdown reason \"", std::string(reason),
                                                   "\" is not one of poweroff, reboot, halt, suspend, s3"));
  }
  Toolstack toolstack(store);
  // The node keeps its owner (the guest), which must be able to clear it.
  return toolstack.Write(absl::StrCat(Store::DomainPath(domid), "/control/shutdown"), reason,
                         {{domid, Access::kNone}});
}

absl::Status SetMemoryTarget(Store& store, uint32_t domid, uint64_t target_kib) {
  Toolstack toolstack(store);
  return toolstack.Write(absl::StrCat(Store::DomainPath(domid), "/memory/target"), absl::StrCat(target_kib),
                         {{0, Access::kNone}, {domid, Access::kRead}});
}

bool GuestAdvertises(Store& store, uint32_t domid, std::string_view feature) {
  Toolstack toolstack(store);
  Result<std::string> value = toolstack.Read(absl::StrCat(Store::DomainPath(domid), "/control/feature-", std::string(feature)));
  return value.ok() && value.value() == "1";
}

}  // namespace xenkvm::xen::xenstore
