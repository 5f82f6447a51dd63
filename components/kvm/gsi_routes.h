// GsiRoutes: the VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table every time, so
// MSI routes (IOAPIC pins, PCI MSIs) and Xen event-channel routes (PIRQs delivered by the kernel)
// are kept together here and always committed as one.
#ifndef XENKVM_COMPONENTS_KVM_GSI_ROUTES_H_
#define XENKVM_COMPONENTS_KVM_GSI_ROUTES_H_

#include <linux/kvm.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace xenkvm::kvm {

class GsiRoutes {
 public:
  // KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
  static constexpr uint32_t kMaxRoutes = 4096;

  // One route per GSI: setting a GSI that has a route replaces it.
  absl::Status SetMsi(uint32_t gsi, uint64_t address, uint32_t data);
  absl::Status SetXenEvtchn(uint32_t gsi, uint32_t port, uint32_t vcpu, uint32_t priority);
  // kNotFound if the GSI has no route.
  absl::Status Remove(uint32_t gsi);

  size_t size() const { return routes_.size(); }
  std::optional<kvm_irq_routing_entry> Find(uint32_t gsi) const;

  // The kvm_irq_routing header followed by its entries at the kernel's offset (8), ready for
  // KVM_SET_GSI_ROUTING; 8-byte words keep the buffer aligned.
  std::vector<uint64_t> Serialize() const;

 private:
  absl::Status Put(uint32_t gsi, const kvm_irq_routing_entry& entry);
  std::map<uint32_t, kvm_irq_routing_entry> routes_;
};

}  // namespace xenkvm::kvm

#endif  // XENKVM_COMPONENTS_KVM_GSI_ROUTES_H_
