// The toolstack's part of XenStore for one guest (what libxl writes when it builds a domain and
// when `xl shutdown` asks it to stop), done with a privileged client of the store.
#ifndef XENKVM_COMPONENTS_XEN_XENSTORE_DOMAIN_H_
#define XENKVM_COMPONENTS_XEN_XENSTORE_DOMAIN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "components/xen/xenstore/store.h"

namespace xenkvm::xen::xenstore {

struct DomainInfo {
  uint32_t domid = 1;
  std::string name;
  uint32_t vcpus = 1;
  uint64_t memory_kib = 0;
  // The primary PV console the VMM serves (its ring's frame and event channel), if any.
  struct Console {
    uint64_t ring_gfn = 0;
    uint32_t port = 0;
  };
  std::optional<Console> console;
};

// Introduces the domain and writes its home, /local/domain/<domid>: name, domid, cpu/N/availability,
// memory/{static-max,target}, and control/ (shutdown, feature-*, sysrq), data/, device/, drivers/,
// error/, feature/, attr/ with libxl's permissions: the home and control/ read-only to the guest,
// the rest its own; with a console, console/{ring-ref,port,type,limit} (read-only) too.
absl::Status CreateDomain(Store& store, const DomainInfo& domain);

// Writes `reason` ("poweroff", "reboot", "halt", "suspend", "s3") to control/shutdown, where the
// guest's shutdown watch sees it. kInvalidArgument for another reason.
absl::Status RequestShutdown(Store& store, uint32_t domid, std::string_view reason);

// Whether the guest's PV drivers advertise the control/feature-<feature> ("poweroff", "reboot"...).
bool GuestAdvertises(Store& store, uint32_t domid, std::string_view feature);

// The balloon target, as `xl mem-set` sets it: memory/target (KiB), which the guest's balloon
// driver watches. The guest may read it only.
absl::Status SetMemoryTarget(Store& store, uint32_t domid, uint64_t target_kib);

}  // namespace xenkvm::xen::xenstore

#endif  // XENKVM_COMPONENTS_XEN_XENSTORE_DOMAIN_H_
