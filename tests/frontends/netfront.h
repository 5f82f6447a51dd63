// The guest side of the netif rings, in process, on real guest memory: a transmit and a receive
// ring granted to the backend, packets put in the transmit ring, receive buffers posted, responses
// taken, as Linux's xen-netfront does. Tests and benchmarks drive xen-net with it; it can also
// misbehave on purpose (raw slots, raw indexes).
#ifndef XENKVM_TESTS_FRONTENDS_NETFRONT_H_
#define XENKVM_TESTS_FRONTENDS_NETFRONT_H_

#include <array>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "components/memory/guest_memory.h"
#include "components/xenbus/netif.h"
#include "tests/frontends/guest_grants.h"

namespace xenkvm::testing {

class Netfront {
 public:
  struct TxResponse {
    uint16_t id;
    int16_t status;
  };
  struct RxResponse {
    uint16_t id, offset, flags;
    int16_t status;
  };

  Netfront(const memory::GuestMemory& memory, GuestGrants& grants, uint64_t tx_ring_gfn, uint64_t rx_ring_gfn)
      : memory_(memory), tx_ring_gfn_(tx_ring_gfn), rx_ring_gfn_(rx_ring_gfn) {
    for (uint64_t gfn : {tx_ring_gfn, rx_ring_gfn}) {  // SHARED_RING_INIT
      (void)memory_.Zero(At(gfn, 0), 4096);
      (void)memory_.AtomicStore<uint32_t>(At(gfn, 4), 1);
      (void)memory_.AtomicStore<uint32_t>(At(gfn, 12), 1);
    }
    tx_ring_gref_ = grants.Grant(tx_ring_gfn, false);
    rx_ring_gref_ = grants.Grant(rx_ring_gfn, false);
  }
  uint32_t tx_ring_gref() const { return tx_ring_gref_; }
  uint32_t rx_ring_gref() const { return rx_ring_gref_; }

  // ---- Transmit
  static std::array<uint8_t, xenbus::netif::kTxSlotSize> TxSlot(uint32_t gref, uint16_t offset, uint16_t flags,
                                                                  uint16_t id, uint16_t size) {
    std::array<uint8_t, xenbus::netif::kTxSlotSize> slot{};
    std::memcpy(slot.data(), &gref, 4);
    std::memcpy(slot.data() + 4, &offset, 2);
    std::memcpy(slot.data() + 6, &flags, 2);
    std::memcpy(slot.data() + 8, &id, 2);
    std::memcpy(slot.data() + 10, &size, 2);
    return slot;
  }
  void PutTx(const std::array<uint8_t, xenbus::netif::kTxSlotSize>& slot) {
    (void)memory_.Write(SlotAt(tx_ring_gfn_, tx_producer_++ % xenbus::netif::kTxSlots, xenbus::netif::kTxSlotSize), slot);
  }
  void PublishTx() { SetTxProducer(tx_producer_); }
  void SetTxProducer(uint32_t value) { (void)memory_.AtomicStore<uint32_t>(At(tx_ring_gfn_, 0), value); }
  std::vector<TxResponse> TakeTx(size_t count, absl::Duration timeout = absl::Seconds(10)) {
    std::vector<TxResponse> responses;
    Take(tx_ring_gfn_, tx_consumer_, count, timeout, [&](uint32_t index) {
      std::array<uint8_t, 4> bytes{};
      (void)memory_.Read(SlotAt(tx_ring_gfn_, index % xenbus::netif::kTxSlots, xenbus::netif::kTxSlotSize), bytes);
      TxResponse response;
      std::memcpy(&response.id, bytes.data(), 2);
      std::memcpy(&response.status, bytes.data() + 2, 2);
      responses.push_back(response);
    });
    return responses;
  }

  // ---- Receive
  void PostRx(uint16_t id, uint32_t gref) {
    std::array<uint8_t, xenbus::netif::kRxSlotSize> slot{};
    std::memcpy(slot.data(), &id, 2);
    std::memcpy(slot.data() + 4, &gref, 4);
    (void)memory_.Write(SlotAt(rx_ring_gfn_, rx_producer_++ % xenbus::netif::kRxSlots, xenbus::netif::kRxSlotSize), slot);
  }
  void PublishRx() { SetRxProducer(rx_producer_); }
  void SetRxProducer(uint32_t value) { (void)memory_.AtomicStore<uint32_t>(At(rx_ring_gfn_, 0), value); }
  std::vector<RxResponse> TakeRx(size_t count, absl::Duration timeout = absl::Seconds(10)) {
    std::vector<RxResponse> responses;
    Take(rx_ring_gfn_, rx_consumer_, count, timeout, [&](uint32_t index) {
      std::array<uint8_t, xenbus::netif::kRxSlotSize> bytes{};
      (void)memory_.Read(SlotAt(rx_ring_gfn_, index % xenbus::netif::kRxSlots, xenbus::netif::kRxSlotSize), bytes);
      RxResponse response;
      std::memcpy(&response.id, bytes.data(), 2);
      std::memcpy(&response.offset, bytes.data() + 2, 2);
      std::memcpy(&response.flags, bytes.data() + 4, 2);
      std::memcpy(&response.status, bytes.data() + 6, 2);
      responses.push_back(response);
    });
    return responses;
  }

 private:
  static memory::GuestAddress At(uint64_t gfn, uint64_t offset) { return memory::GuestAddress((gfn << 12) + offset); }
  static memory::GuestAddress SlotAt(uint64_t gfn, uint32_t slot, size_t size) {
    return At(gfn, xenbus::netif::kRingHeaderSize + slot * size);
  }
  uint32_t ResponseProducer(uint64_t gfn) const { return memory_.AtomicLoad<uint32_t>(At(gfn, 8)).value_or(0); }
  // Waits up to `timeout` for `count` new responses, reads them, and asks for an event at the next.
  template <typename Read>
  void Take(uint64_t gfn, uint32_t& consumer, size_t count, absl::Duration timeout, Read read) {
    const absl::Time deadline = absl::Now() + timeout;
    for (int spins = 0; ResponseProducer(gfn) - consumer < count && absl::Now() < deadline; ++spins) {
      if (spins < 20000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    for (size_t taken = 0; consumer != ResponseProducer(gfn) && taken < count; ++taken) read(consumer++);
    (void)memory_.AtomicStore<uint32_t>(At(gfn, 12), consumer + 1);
  }

  const memory::GuestMemory& memory_;
  const uint64_t tx_ring_gfn_, rx_ring_gfn_;
  uint32_t tx_ring_gref_ = 0, rx_ring_gref_ = 0;
  uint32_t tx_producer_ = 0, tx_consumer_ = 0;
  uint32_t rx_producer_ = 0, rx_consumer_ = 0;
};

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_FRONTENDS_NETFRONT_H_
