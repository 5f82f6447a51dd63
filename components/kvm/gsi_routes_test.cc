#include "components/kvm/gsi_routes.h"

#include <cstring>

#include "components/kvm/flex_array.h"
#include "gtest/gtest.h"

namespace xenkvm::kvm {
namespace {

kvm_irq_routing_entry EntryAt(const std::vector<uint64_t>& table, size_t index) {
  kvm_irq_routing_entry entry;
  std::memcpy(&entry,
              reinterpret_cast<const uint8_t*>(table.data()) + internal::kIrqRoutingEntriesOffset +
                  index * sizeof(entry),
              sizeof(entry));
  return entry;
}

TEST(GsiRoutesTest, SerializesMsiAndXenRoutesTogetherInGsiOrder) {
  GsiRoutes routes;
  ASSERT_TRUE(routes.SetXenEvtchn(40, /*port=*/7, /*vcpu=*/1, KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL).ok());
  ASSERT_TRUE(routes.SetMsi(5, 0x1'fee0'1000ull, 0x31).ok());
  std::vector<uint64_t> table = routes.Serialize();
  ASSERT_EQ(table.size() * 8, internal::kIrqRoutingEntriesOffset + 2 * sizeof(kvm_irq_routing_entry));
  EXPECT_EQ(static_cast<uint32_t>(table[0]), 2u);        // nr
  EXPECT_EQ(static_cast<uint32_t>(table[0] >> 32), 0u);  // flags
  kvm_irq_routing_entry msi = EntryAt(table, 0);
  EXPECT_EQ(msi.gsi, 5u);
  EXPECT_EQ(msi.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_MSI));
  EXPECT_EQ(msi.u.msi.address_lo, 0xfee01000u);
  EXPECT_EQ(msi.u.msi.address_hi, 1u);
  EXPECT_EQ(msi.u.msi.data, 0x31u);
  kvm_irq_routing_entry xen = EntryAt(table, 1);
  EXPECT_EQ(xen.gsi, 40u);
  EXPECT_EQ(xen.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_XEN_EVTCHN));
  EXPECT_EQ(xen.u.xen_evtchn.port, 7u);
  EXPECT_EQ(xen.u.xen_evtchn.vcpu, 1u);
  EXPECT_EQ(xen.u.xen_evtchn.priority, KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL);
}

TEST(GsiRoutesTest, SettingAGsiAgainReplacesItsRoute) {
  GsiRoutes routes;
  ASSERT_TRUE(routes.SetMsi(5, 0xfee00000, 0x30).ok());
  ASSERT_TRUE(routes.SetXenEvtchn(5, 3, 0, KVM_IRQ_ROUTING_XEN_EVTCHN_PRIO_2LEVEL).ok());
  EXPECT_EQ(routes.size(), 1u);
  EXPECT_EQ(routes.Find(5)->type, static_cast<uint32_t>(KVM_IRQ_ROUTING_XEN_EVTCHN));
}

TEST(GsiRoutesTest, RemoveAndEmptyTable) {
  GsiRoutes routes;
  EXPECT_EQ(routes.Remove(9).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(routes.SetMsi(9, 0xfee00000, 0x30).ok());
  ASSERT_TRUE(routes.Remove(9).ok());
  EXPECT_FALSE(routes.Find(9).has_value());
  std::vector<uint64_t> table = routes.Serialize();
  ASSERT_EQ(table.size(), 1u);
  EXPECT_EQ(table[0], 0u);
}

TEST(GsiRoutesTest, TableIsBounded) {
  GsiRoutes routes;
  for (uint32_t gsi = 0; gsi < GsiRoutes::kMaxRoutes; ++gsi) {
    ASSERT_TRUE(routes.SetMsi(gsi, 0xfee00000, 0x30).ok());
  }
  EXPECT_EQ(routes.SetMsi(GsiRoutes::kMaxRoutes, 0xfee00000, 0x30).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(routes.SetMsi(0, 0xfee00000, 0x31).ok());  // replacing is still fine
}

}  // namespace
}  // namespace xenkvm::kvm
