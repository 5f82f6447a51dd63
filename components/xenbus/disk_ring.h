// The data path of one xen-disk: a blkif ring the frontend granted, served on an I/O thread of its
// own. Each request is copied out of its slot once, decoded and checked (blkif.h), its segments
// are mapped through the grant table (all or none: one bad grant fails the request and releases
// the others, XSA-361/362/365), the data moves between the granted pages and the image, and a
// response with zeroed padding goes back. A producer index more than the ring ahead stops the
// ring (the frontend broke the protocol) without touching anything.
//
// With persistent grants the frontend reuses the same granted pages; their mappings are kept
// (up to a bound) until the ring is torn down, saving the pin/unpin per request.
#ifndef XENKVM_COMPONENTS_XENBUS_DISK_RING_H_
#define XENKVM_COMPONENTS_XENBUS_DISK_RING_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <array>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/blkif.h"

namespace xenkvm::xenbus {

// Upper bounds (seconds) of the request-latency histogram's buckets; one more bucket counts the rest.
inline constexpr std::array<double, 13> kLatencyBounds = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3,  2.5e-3, 5e-3,
                                                          10e-3, 25e-3,  50e-3,  100e-3, 250e-3, 1.0};

struct DiskRingStatistics {
  uint64_t requests = 0;
  uint64_t errors = 0;           // answered BLKIF_RSP_ERROR
  uint64_t unsupported = 0;      // answered BLKIF_RSP_EOPNOTSUPP
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t flushes = 0;
  uint64_t discards = 0;
  uint64_t persistent_grants = 0;  // mappings kept now
  // Service time of each request (taken off the ring to its response written), by bucket of
  // kLatencyBounds (the last: beyond 1 s), and their sum.
  std::array<uint64_t, kLatencyBounds.size() + 1> latency_counts{};
  double latency_seconds_sum = 0;
  bool broken = false;             // the frontend broke the ring; no more requests are taken
};

class DiskRing {
 public:
  struct Options {
    blkif::Abi abi = blkif::Abi::k64;
    uint32_t ring_gref = 0;
    bool persistent_grants = false;
    uint32_t max_indirect_segments = 0;
    bool flush = true;    // offered: FLUSH_DISKCACHE requests are served, else EOPNOTSUPP
    bool discard = true;  // offered (and the image can)
    uint32_t max_persistent_grants = 1056;  // 32 slots x 11 segments x 3, as Linux blkback allows
  };

  // Maps the ring's grant (writable) and starts the I/O thread. `notify` raises the frontend's
  // event channel (from the I/O thread). The image, grant table and memory must outlive it.
  static absl::StatusOr<std::unique_ptr<DiskRing>> Start(const memory::GuestMemory& memory, xen::GrantTable& grants,
                                                         block::Image& image, Options options,
                                                         std::function<void()> notify);
  // Stops the thread, then releases every mapping (the ring's too).
  ~DiskRing();

  // The frontend's event: look at the ring.
  void Kick();

  DiskRingStatistics Statistics() const;

 private:
  DiskRing(const memory::GuestMemory& memory, xen::GrantTable& grants, block::Image& image, Options options,
           std::function<void()> notify);
  void Run();
  // Takes every request in the ring; false once the ring is broken.
  bool ProcessRing();
  int16_t Handle(blkif::Request& request);
  int16_t Transfer(const blkif::Request& request);
  // Maps `gref` for the data direction; a persistent mapping when allowed.
  bool MapSegment(uint32_t gref, bool device_writes, xen::GrantTable::Mapping* mapping, bool* transient);
  uint64_t RingAddress(uint64_t offset) const { return (ring_.gfn << 12) + offset; }

  const memory::GuestMemory& memory_;
  xen::GrantTable& grants_;
  block::Image& image_;
  const Options options_;
  const blkif::DiskLimits limits_;
  const uint32_t slots_;
  std::function<void()> notify_;
  xen::GrantTable::Mapping ring_;

  // The I/O thread's own.
  uint32_t request_consumer_ = 0;
  uint32_t response_producer_ = 0;
  absl::flat_hash_map<uint32_t, xen::GrantTable::Mapping> persistent_;
  std::vector<uint8_t> bounce_;

  mutable absl::Mutex mutex_;
  bool kicked_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  DiskRingStatistics statistics_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_DISK_RING_H_
