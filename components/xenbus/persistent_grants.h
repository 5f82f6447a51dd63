// The grant mappings a disk ring keeps for a frontend that offered feature-persistent, found by
// grant reference. A 1 MiB request looks up 256 of them (hashing each was 2% of its time), so
// they are indexed: references are below the guest's grant table size, and the index is built in
// 64-reference pieces (256 bytes) as references are kept. A table configured large (up to 4096
// frames: 2 M references) costs a pointer per piece and the pieces used: at most one per kept
// reference, which the ring's budget bounds, even for a frontend that spreads them on purpose.
#ifndef XENKVM_COMPONENTS_XENBUS_PERSISTENT_GRANTS_H_
#define XENKVM_COMPONENTS_XENBUS_PERSISTENT_GRANTS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "components/xen/grant_table.h"

namespace xenkvm::xenbus {

class PersistentGrants {
 public:
  // The mapping kept for `ref`, or null.
  const xen::GrantTable::Mapping* Find(uint32_t ref) const {
    const size_t piece = ref / kPiece;
    if (piece >= index_.size() || index_[piece] == nullptr) return nullptr;
    const uint32_t place = (*index_[piece])[ref % kPiece];
    return place == 0 ? nullptr : &mappings_[place - 1];
  }

  // Keeps `mapping` (of a reference not kept yet).
  void Add(const xen::GrantTable::Mapping& mapping) {
    const size_t piece = mapping.ref / kPiece;
    if (piece >= index_.size()) index_.resize(piece + 1);
    if (index_[piece] == nullptr) index_[piece] = std::make_unique<Piece>();
    mappings_.push_back(mapping);
    (*index_[piece])[mapping.ref % kPiece] = static_cast<uint32_t>(mappings_.size());
  }

  size_t size() const { return mappings_.size(); }
  const std::vector<xen::GrantTable::Mapping>& mappings() const { return mappings_; }

 private:
  static constexpr size_t kPiece = 64;
  using Piece = std::array<uint32_t, kPiece>;  // 1 + the place in mappings_; 0: not kept

  std::vector<xen::GrantTable::Mapping> mappings_;
  std::vector<std::unique_ptr<Piece>> index_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_PERSISTENT_GRANTS_H_
