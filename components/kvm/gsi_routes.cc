#include "components/kvm/gsi_routes.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "components/kvm/flex_array.h"

namespace xenkvm::kvm {

absl::Status GsiRoutes::Put(uint32_t gsi, const kvm_irq_routing_entry& entry) {
  if (!routes_.contains(gsi) && routes_.size() >= kMaxRoutes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("GSI routing table is full (", kMaxRoutes, " routes); cannot add GSI ", gsi));
  }
  routes_[gsi] = entry;
  return absl::OkStatus();
}

absl::Status GsiRoutes::SetMsi(uint32_t gsi, uint64_t address, uint32_t data) {
  kvm_irq_routing_entry entry{};
  entry.gsi = gsi;
  entry.type = KVM_IRQ_ROUTING_MSI;
  entry.u.msi.address_lo = static_cast<uint32_t>(address);
  entry.u.msi.address_hi = static_cast<uint32_t>(address >> 32);
  entry.u.msi.data = data;
  return Put(gsi, entry);
}

absl::Status GsiRoutes::SetXenEvtchn(uint32_t gsi, uint32_t port, uint32_t vcpu, uint32_t priority) {
  kvm_irq_routing_entry entry{};
  entry.gsi = gsi;
  entry.type = KVM_IRQ_ROUTING_XEN_EVTCHN;
  entry.u.xen_evtchn.port = port;
  entry.u.xen_evtchn.vcpu = vcpu;
  entry.u.xen_evtchn.priority = priority;
  return Put(gsi, entry);
}

absl::Status GsiRoutes::Remove(uint32_t gsi) {
  if (routes_.erase(gsi) == 0) {
    return absl::NotFoundError(absl::StrCat("GSI ", gsi, " has no route"));
  }
  return absl::OkStatus();
}

std::optional<kvm_irq_routing_entry> GsiRoutes::Find(uint32_t gsi) const {
  auto it = routes_.find(gsi);
  if (it == routes_.end()) return std::nullopt;
  return it->second;
}

std::vector<uint64_t> GsiRoutes::Serialize() const {
  static_assert(internal::kIrqRoutingEntriesOffset % 8 == 0 && sizeof(kvm_irq_routing_entry) % 8 == 0);
  constexpr size_t kHeaderWords = internal::kIrqRoutingEntriesOffset / 8;
  constexpr size_t kEntryWords = sizeof(kvm_irq_routing_entry) / 8;
  std::vector<uint64_t> buffer(kHeaderWords + routes_.size() * kEntryWords, 0);
  // Header: u32 nr, u32 flags (0).
  buffer[0] = static_cast<uint32_t>(routes_.size());
  size_t i = 0;
  for (const auto& [gsi, entry] : routes_) {
    std::memcpy(&buffer[kHeaderWords + i * kEntryWords], &entry, sizeof(entry));
    ++i;
  }
  return buffer;
}

}  // namespace xenkvm::kvm
