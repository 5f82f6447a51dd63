// The guest side of a blkif ring, in process, on real guest memory: grants pages in the guest's
// grant table (frame 0, mapped where the test put it), puts requests in the ring and takes the
// responses, as Linux's blkfront does. Tests and benchmarks drive xen-disk with it; it can also
// misbehave on purpose (raw slots, raw indexes).
#ifndef XENKVM_TESTS_FRONTENDS_BLKFRONT_H_
#define XENKVM_TESTS_FRONTENDS_BLKFRONT_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "components/memory/guest_memory.h"
#include "components/xenbus/blkif.h"
#include "tests/frontends/guest_grants.h"

namespace xenkvm::testing {

class Blkfront {
 public:
  struct Segment {
    uint32_t gref;
    uint8_t first_sector, last_sector;
  };
  struct Response {
    uint64_t id;
    uint8_t operation;
    int16_t status;
  };

  // `table_gfn`: where the guest mapped grant-table frame 0; `ring_gfn`: the ring's first page;
  // `grant_version`: the layout its entries take (1: 8 bytes; 2: 16 bytes, a 64-bit frame);
  // `ring_pages`: a multi-page ring's pages, every other frame from `ring_gfn` (as a guest's are
  // not contiguous either); `first_ref`: its first grant reference (queues sharing a table).
  Blkfront(const memory::GuestMemory& memory, uint64_t table_gfn, uint64_t ring_gfn,
           xenbus::blkif::Abi abi = xenbus::blkif::Abi::k64, int grant_version = 1, uint32_t ring_pages = 1,
           uint32_t first_ref = 8)
      : memory_(memory), grants_(memory, table_gfn, grant_version, first_ref), ring_gfn_(ring_gfn), abi_(abi),
        slots_(xenbus::blkif::RingSlots(abi, ring_pages)) {
    for (uint32_t i = 0; i < ring_pages; ++i) {
      (void)memory_.Zero(memory::GuestAddress((ring_gfn + 2 * i) << 12), 4096);
      ring_grefs_.push_back(Grant(ring_gfn + 2 * i, false));
    }
    // SHARED_RING_INIT: indexes 0, both event indexes 1.
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress((ring_gfn << 12) + 4), 1);
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress((ring_gfn << 12) + 12), 1);
  }

  uint32_t ring_gref() const { return ring_grefs_[0]; }
  const std::vector<uint32_t>& ring_grefs() const { return ring_grefs_; }
  uint32_t slots() const { return slots_; }

  // The guest's grant table (guest_grants.h).
  uint32_t Grant(uint64_t gfn, bool readonly, uint16_t domid = 0) { return grants_.Grant(gfn, readonly, domid); }
  void WriteEntry(uint32_t ref, uint16_t flags, uint16_t domid, uint32_t frame) {
    grants_.WriteEntry(ref, flags, domid, frame);
  }
  uint16_t EntryFlags(uint32_t ref) const { return grants_.EntryFlags(ref); }

  // A READ/WRITE request of the 64-bit ABI (the 32-bit one: id at 4, sector at 12, segments at 20).
  std::vector<uint8_t> ReadWrite(uint8_t operation, uint64_t id, uint64_t sector, const std::vector<Segment>& segments) {
    std::vector<uint8_t> slot(xenbus::blkif::RequestSize(abi_), 0);
    const bool wide = abi_ == xenbus::blkif::Abi::k64;
    slot[0] = operation;
    slot[1] = static_cast<uint8_t>(segments.size());
    std::memcpy(slot.data() + (wide ? 8 : 4), &id, 8);
    std::memcpy(slot.data() + (wide ? 16 : 12), &sector, 8);
    for (size_t i = 0; i < segments.size() && i < 11; ++i) {
      uint8_t* at = slot.data() + (wide ? 24 : 20) + 8 * i;
      std::memcpy(at, &segments[i].gref, 4);
      at[4] = segments[i].first_sector;
      at[5] = segments[i].last_sector;
    }
    return slot;
  }

  // An INDIRECT request (64-bit ABI) of READ or WRITE: `segments` (at most 512) written into the
  // page at `indirect_gfn`, which the request names by `indirect_gref` (granted by the caller).
  std::vector<uint8_t> Indirect(uint8_t operation, uint64_t id, uint64_t sector, const std::vector<Segment>& segments,
                                uint64_t indirect_gfn, uint32_t indirect_gref) {
    for (size_t i = 0; i < segments.size() && i < 512; ++i) {
      uint8_t entry[8] = {};
      std::memcpy(entry, &segments[i].gref, 4);
      entry[4] = segments[i].first_sector;
      entry[5] = segments[i].last_sector;
      (void)memory_.Write(memory::GuestAddress((indirect_gfn << 12) + 8 * i), std::span<const uint8_t>(entry, 8));
    }
    std::vector<uint8_t> slot(xenbus::blkif::RequestSize(abi_), 0);
    slot[0] = xenbus::blkif::kOpIndirect;
    slot[1] = operation;
    const uint16_t count = static_cast<uint16_t>(std::min<size_t>(segments.size(), 512));
    std::memcpy(slot.data() + 2, &count, 2);
    std::memcpy(slot.data() + 8, &id, 8);
    std::memcpy(slot.data() + 16, &sector, 8);
    std::memcpy(slot.data() + 28, &indirect_gref, 4);
    return slot;
  }

  // Puts `slot` at the next free request slot; Publish() makes everything put visible.
  void Put(std::span<const uint8_t> slot) {
    RingCopy(xenbus::blkif::kRingHeaderSize + (private_producer_ % slots_) * xenbus::blkif::RequestSize(abi_),
             const_cast<uint8_t*>(slot.data()), slot.size(), /*to_ring=*/true);
    ++private_producer_;
  }
  void Publish() { SetRequestProducer(private_producer_); }
  // RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publishes, and says whether the backend asked to be
  // notified of these requests (req_event), as Linux's blkfront decides whether to kick.
  bool PublishAndCheckNotify() {
    const uint32_t old = published_;
    published_ = private_producer_;
    SetRequestProducer(private_producer_);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint32_t event = memory_.AtomicLoad<uint32_t>(memory::GuestAddress((ring_gfn_ << 12) + 4)).value_or(old + 1);
    return private_producer_ - event < private_producer_ - old;
  }
  void SetRequestProducer(uint32_t value) {
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress(ring_gfn_ << 12), value);
  }
  uint32_t ResponseProducer() const {
    return memory_.AtomicLoad<uint32_t>(memory::GuestAddress((ring_gfn_ << 12) + 8)).value_or(0);
  }

  // Waits up to `timeout` for `count` new responses and takes them (`all`: every one there then).
  std::vector<Response> Take(size_t count, absl::Duration timeout = absl::Seconds(10), bool all = false) {
    const absl::Time deadline = absl::Now() + timeout;
    // Spin first (without a system call for the first thousands of looks): a response usually
    // comes within microseconds; then sleep.
    for (int spins = 0; ResponseProducer() - response_consumer_ < count && absl::Now() < deadline; ++spins) {
      if (spins < 20000) {
        __builtin_ia32_pause();
      } else if (spins < 40000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    std::vector<Response> responses;
    while (response_consumer_ != ResponseProducer() && (all || responses.size() < count)) {
      std::vector<uint8_t> bytes(xenbus::blkif::ResponseSize(abi_));
      RingCopy(xenbus::blkif::kRingHeaderSize + (response_consumer_ % slots_) * xenbus::blkif::RequestSize(abi_),
               bytes.data(), bytes.size(), /*to_ring=*/false);
      Response response;
      std::memcpy(&response.id, bytes.data(), 8);
      response.operation = bytes[8];
      std::memcpy(&response.status, bytes.data() + 10, 2);
      responses.push_back(response);
      ++response_consumer_;
    }
    // Ask for an event at the next response, as RING_FINAL_CHECK_FOR_RESPONSES does.
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress((ring_gfn_ << 12) + 12), response_consumer_ + 1);
    return responses;
  }

 private:
  // Bytes at `offset` in the ring, across its pages.
  void RingCopy(uint64_t offset, uint8_t* data, size_t length, bool to_ring) {
    for (size_t done = 0; done < length;) {
      const uint64_t at = offset + done;
      const size_t piece = std::min<size_t>(length - done, 4096 - at % 4096);
      const memory::GuestAddress address(((ring_gfn_ + 2 * (at / 4096)) << 12) + at % 4096);
      if (to_ring) {
        (void)memory_.Write(address, std::span<const uint8_t>(data + done, piece));
      } else {
        (void)memory_.Read(address, std::span<uint8_t>(data + done, piece));
      }
      done += piece;
    }
  }

  const memory::GuestMemory& memory_;
  GuestGrants grants_;
  const uint64_t ring_gfn_;
  const xenbus::blkif::Abi abi_;
  const uint32_t slots_;
  std::vector<uint32_t> ring_grefs_;
  uint32_t private_producer_ = 0;
  uint32_t published_ = 0;
  uint32_t response_consumer_ = 0;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_BLKFRONT_H_
