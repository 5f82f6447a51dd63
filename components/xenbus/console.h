// The backend of a guest's Xen PV console (xencons_interface: in[1024], out[2048] and four
// free-running indexes in one guest page), as xenconsoled serves it: on each guest event it takes
// what the guest wrote to out[] and hands it to the VMM's console log; Send() puts host input into
// in[]. The guest is hostile: indexes are read once per pass, a producer more than the ring ahead
// of its consumer is ignored (and counted), never followed.
#ifndef XENKVM_COMPONENTS_XENBUS_CONSOLE_H_
#define XENKVM_COMPONENTS_XENBUS_CONSOLE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::xenbus {

struct ConsoleStatistics {
  uint64_t output_bytes = 0;
  uint64_t input_bytes = 0;
  uint64_t bad_indexes = 0;  // passes that found out_prod - out_cons beyond the ring
};

class ConsoleBackend {
 public:
  // `ring_gpa`: the page (zeroed here). `output` receives the guest's bytes; `notify` raises the
  // guest's console event channel. Everything runs on one thread (the VMM's backend loop).
  static absl::StatusOr<std::unique_ptr<ConsoleBackend>> Create(const memory::GuestMemory& memory, uint64_t ring_gpa,
                                                                std::function<void(std::span<const uint8_t>)> output,
                                                                std::function<void()> notify);

  // The guest's event: drains out[] (and tells the guest, which may be waiting for room).
  void Process();
  // Host input for the guest: as much of `bytes` as in[] has room for; returns how many.
  size_t Send(std::span<const uint8_t> bytes);

  const ConsoleStatistics& statistics() const { return statistics_; }

 private:
  ConsoleBackend(const memory::GuestMemory& memory, uint64_t ring_gpa,
                 std::function<void(std::span<const uint8_t>)> output, std::function<void()> notify)
      : memory_(memory), ring_gpa_(ring_gpa), output_(std::move(output)), notify_(std::move(notify)) {}
  std::optional<uint32_t> Load(uint64_t offset) const;
  void Store(uint64_t offset, uint32_t value) const;

  const memory::GuestMemory& memory_;
  const uint64_t ring_gpa_;
  std::function<void(std::span<const uint8_t>)> output_;
  std::function<void()> notify_;
  ConsoleStatistics statistics_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_CONSOLE_H_
