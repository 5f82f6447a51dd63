// Fuzz target: XenStore as a hostile guest and a hostile socket client meet it. The input is a
// script of ring operations (bytes into req[], raw values into the four indexes, reconnection
// requests, consuming replies) run against a RingServer on real guest memory, and is also fed
// whole to a privileged and an unprivileged Connection. The store must answer or refuse, never
// crash, never read or write outside the ring page, and keep its output bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "components/memory/guest_memory.h"
#include "components/xen/xenstore/connection.h"
#include "components/xen/xenstore/domain.h"
#include "components/xen/xenstore/ring_server.h"
#include "components/xen/xenstore/store.h"
#include "spdlog/spdlog.h"
#include "xen/io/xs_wire.h"

namespace {

using namespace xenkvm;

constexpr uint64_t kRingGpa = 0x1000;

void FeedConnection(xen::xenstore::Store& store, bool privileged, const uint8_t* data, size_t size) {
  xen::xenstore::Connection connection(store, privileged ? 0 : 1, privileged, [] {});
  size_t offset = 0;
  while (offset < size) {
    absl::StatusOr<size_t> taken = connection.Receive({data + offset, size - offset});
    if (!taken.ok()) return;  // a protocol error ends the connection
    offset += *taken;
    if (connection.Output().size() > xen::xenstore::kOutputBudget + 2 * (xen::xenstore::kPayloadMax + 16)) abort();
    connection.Consume(connection.Output().size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);  // every broken ring would log a warning
    return true;
  }();
  (void)quiet;
  static memory::GuestMemory* memory = new memory::GuestMemory(
      std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 0x3000}})).value());
  xen::xenstore::Store store;
  if (!xen::xenstore::CreateDomain(store, {1, "fuzz", 1, 1024}).ok()) abort();
  auto ring = std::move(xen::xenstore::RingServer::Create(store, *memory, kRingGpa, 1, [] {}, [] {})).value();

  auto store32 = [&](size_t offset, uint32_t value) {
    (void)memory->AtomicStore<uint32_t>(memory::GuestAddress(kRingGpa + offset), value);
  };
  auto load32 = [&](size_t offset) {
    return memory->AtomicLoad<uint32_t>(memory::GuestAddress(kRingGpa + offset)).value_or(0);
  };
  size_t i = 0;
  while (i < size) {
    const uint8_t op = data[i++];
    switch (op % 4) {
      case 0: {  // bytes into req[] at req_prod, then publish them
        size_t count = i < size ? data[i++] : 0;
        count = std::min(count, size - i);
        uint32_t producer = load32(offsetof(xenstore_domain_interface, req_prod));
        for (size_t n = 0; n < count; ++n) {
          (void)memory->Write(memory::GuestAddress(kRingGpa + (producer + n) % XENSTORE_RING_SIZE), {data + i + n, 1});
        }
        i += count;
        store32(offsetof(xenstore_domain_interface, req_prod), producer + static_cast<uint32_t>(count));
        break;
      }
      case 1: {  // a raw value into one of the four indexes
        if (i + 5 > size) return 0;
        uint32_t value;
        std::memcpy(&value, data + i + 1, 4);
        store32(offsetof(xenstore_domain_interface, req_cons) + 4 * (data[i] % 4), value);
        i += 5;
        break;
      }
      case 2:  // the guest asks to reconnect
        store32(offsetof(xenstore_domain_interface, connection), XENSTORE_RECONNECT);
        break;
      case 3:  // the guest consumes every reply
        store32(offsetof(xenstore_domain_interface, rsp_cons), load32(offsetof(xenstore_domain_interface, rsp_prod)));
        break;
    }
    ring->Process();
  }
  FeedConnection(store, false, data, size);
  FeedConnection(store, true, data, size);
  return 0;
}
