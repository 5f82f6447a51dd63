// The guest side of a blkif ring, in process, on real guest memory: grants pages in the guest's
// grant table (frame 0, mapped where the test put it), puts requests in the ring and takes the
// responses, as Linux's blkfront does. Tests and benchmarks drive xen-disk with it; it can also
// misbehave on purpose (raw slots, raw indexes).
#ifndef XENKVM_TESTS_FRONTENDS_BLKFRONT_H_
#define XENKVM_TESTS_FRONTENDS_BLKFRONT_H_

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "components/base/spin_wait.h"
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
        slots_(xenbus::blkif::RingSlots(abi, ring_pages)),
        ring_header_(memory.HostAddress(memory::GuestAddress(ring_gfn << 12), 4096).value()) {
    for (uint32_t i = 0; i < ring_pages; ++i) {
      (void)memory_.Zero(memory::GuestAddress((ring_gfn + 2 * i) << 12), 4096);
      ring_grefs_.push_back(Grant(ring_gfn + 2 * i, false));
    }
    // SHARED_RING_INIT: indexes 0, both event indexes 1.
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress((ring_gfn << 12) + 4), 1);
    (void)memory_.AtomicStore<uint32_t>(memory::GuestAddress((ring_gfn << 12) + 12), 1);
  }

  Blkfront(const Blkfront&) = delete;
  Blkfront& operator=(const Blkfront&) = delete;
  ~Blkfront() {
    if (event_ >= 0) close(event_);
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
    const uint32_t event = Header(4).load(std::memory_order_acquire);
    return private_producer_ - event < private_producer_ - old;
  }
  void SetRequestProducer(uint32_t value) {
    Header(0).store(value, std::memory_order_release);
  }
  uint32_t ResponseProducer() const {
    return Header(8).load(std::memory_order_acquire);
  }

  // The backend's `notify` (the frontend's event channel, in process): it wakes a Take that
  // stopped polling. Without one, a waiting Take yields and naps instead of sleeping. As an
  // event to a running vCPU is a pending bit and to a halted one a wake-up, it writes the
  // eventfd only while the frontend sleeps on it.
  std::function<void()> EventNotifier() {
    if (event_ < 0) event_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return [fd = event_, sleeping = sleeping_] {
      // The backend stored its response producer and fenced before this look (and the
      // frontend stores `sleeping` before its last look at the ring).
      if (!sleeping->load(std::memory_order_seq_cst)) return;
      const uint64_t one = 1;
      (void)!write(fd, &one, sizeof(one));
    };
  }

  // How often a Take has slept on its event (a vCPU halted until the backend's notification).
  uint64_t sleeps() const { return sleeps_; }

  // Waits up to `timeout` for `count` new responses and takes them (`all`: every one there then).
  std::vector<Response> Take(size_t count, absl::Duration timeout = absl::Seconds(10), bool all = false) {
    if (Waiting() < count) WaitForResponses(count, absl::Now() + timeout);  // a vCPU with them there does not halt
    std::vector<Response> responses;
    while (response_consumer_ != ResponseProducer() && (all || responses.size() < count)) {
      std::array<uint8_t, 16> bytes{};
      RingCopy(xenbus::blkif::kRingHeaderSize + (response_consumer_ % slots_) * xenbus::blkif::RequestSize(abi_),
               bytes.data(), xenbus::blkif::ResponseSize(abi_), /*to_ring=*/false);
      Response response;
      std::memcpy(&response.id, bytes.data(), 8);
      response.operation = bytes[8];
      std::memcpy(&response.status, bytes.data() + 10, 2);
      responses.push_back(response);
      ++response_consumer_;
    }
    // Ask for an event at the next response after every Take, as Linux's blkfront does in its
    // interrupt handler (RING_FINAL_CHECK_FOR_RESPONSES): a guest's vCPU halts with it asked for
    // (the polling in WaitForResponses is the host's, KVM's halt polling). The backend sees by it
    // that the frontend has taken every response (disk_ring.h: whom a kick's reads are served by).
    Header(12).store(response_consumer_ + 1, std::memory_order_release);
    return responses;
  }

 private:
  // An index in the ring's header (the host address looked up once: the waits poll them).
  std::atomic_ref<uint32_t> Header(size_t offset) const {
    return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(ring_header_ + offset));
  }

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

  uint32_t Waiting() const { return ResponseProducer() - response_consumer_; }

  void WaitForResponses(size_t count, absl::Time deadline) {
    // Poll first.
    const auto blocked = std::chrono::steady_clock::now();
    if (poll_window_.window().count() > 0) base::SpinFor(poll_window_.window(), [&] { return Waiting() >= count; });
    for (int naps = 0; Waiting() < count && absl::Now() < deadline; ++naps) {
      if (event_ < 0) {
        if (naps < 1000) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
        continue;
      }
      // Ask for an event at the next response, then look once more before sleeping.
      Header(12).store(response_consumer_ + 1, std::memory_order_release);
      sleeping_->store(true, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (Waiting() >= count) {
        sleeping_->store(false, std::memory_order_relaxed);
        break;
      }
      ++sleeps_;
      pollfd wait = {event_, POLLIN, 0};
      const int64_t milliseconds = absl::ToInt64Milliseconds(deadline - absl::Now()) + 1;
      (void)poll(&wait, 1, static_cast<int>(std::min<int64_t>(milliseconds, 1000)));
      sleeping_->store(false, std::memory_order_relaxed);
      uint64_t ignored = 0;
      (void)!read(event_, &ignored, sizeof(ignored));
    }
    poll_window_.Update(std::chrono::steady_clock::now() - blocked);
  }

  const memory::GuestMemory& memory_;
  GuestGrants grants_;
  const uint64_t ring_gfn_;
  const xenbus::blkif::Abi abi_;
  const uint32_t slots_;
  uint8_t* const ring_header_;  // the ring's first page, in the host
  std::vector<uint32_t> ring_grefs_;
  uint32_t private_producer_ = 0;
  uint32_t published_ = 0;
  uint32_t response_consumer_ = 0;
  int event_ = -1;  // an eventfd, once EventNotifier was asked for
  uint64_t sleeps_ = 0;
  // Set while a Take sleeps on event_ (shared with the notifier, which may outlive this).
  std::shared_ptr<std::atomic<bool>> sleeping_ = std::make_shared<std::atomic<bool>>(false);
  // How long a waiting Take polls the ring before it sleeps on its event: as KVM's halt polling
  // for a vCPU.
  base::PollWindow poll_window_;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_BLKFRONT_H_
