// A guest's side of its grant table, in process: entries written where the guest mapped frame 0,
// as gnttab_grant_foreign_access does. Shared by the in-process frontends.
#ifndef XENKVM_TESTS_FRONTENDS_GUEST_GRANTS_H_
#define XENKVM_TESTS_FRONTENDS_GUEST_GRANTS_H_

#include <cstdint>
#include <cstring>
#include <span>

#include "components/memory/guest_memory.h"

namespace xenkvm::testing {

class GuestGrants {
 public:
  // `table_gfn`: where the guest mapped grant-table frame 0; `version`: the layout its entries
  // take (1: 8 bytes; 2: 16 bytes, a 64-bit frame); `first_ref`: the first reference handed out
  // (0-7 are the toolstack's; frontends sharing a table start apart).
  GuestGrants(const memory::GuestMemory& memory, uint64_t table_gfn, int version = 1, uint32_t first_ref = 8)
      : memory_(memory), table_gfn_(table_gfn), version_(version), next_ref_(first_ref) {}

  // Access for domain `domid`; references from `first_ref` up.
  uint32_t Grant(uint64_t gfn, bool readonly, uint16_t domid = 0) {
    const uint32_t ref = next_ref_++;
    WriteEntry(ref, static_cast<uint16_t>(1 /* permit_access */ | (readonly ? 4 : 0)), domid, static_cast<uint32_t>(gfn));
    return ref;
  }
  void WriteEntry(uint32_t ref, uint16_t flags, uint16_t domid, uint32_t frame) {
    const size_t size = version_ == 1 ? 8 : 16;
    uint8_t entry[16] = {};
    std::memcpy(entry, &flags, 2);
    std::memcpy(entry + 2, &domid, 2);
    if (version_ == 1) {
      std::memcpy(entry + 4, &frame, 4);
    } else {
      const uint64_t wide = frame;
      std::memcpy(entry + 8, &wide, 8);
    }
    (void)memory_.Write(memory::GuestAddress((table_gfn_ << 12) + ref * size), std::span<const uint8_t>(entry, size));
  }
  // Version 1's entry flags (GTF_reading/writing live in version 2's status frames instead).
  uint16_t EntryFlags(uint32_t ref) const {
    return memory_.ReadObject<uint16_t>(memory::GuestAddress((table_gfn_ << 12) + ref * 8)).value_or(0xffff);
  }

 private:
  const memory::GuestMemory& memory_;
  const uint64_t table_gfn_;
  const int version_;
  uint32_t next_ref_;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_GUEST_GRANTS_H_
