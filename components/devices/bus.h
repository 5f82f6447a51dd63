// An address space (port I/O or MMIO) of devices registered at non-overlapping ranges. The shape
// follows rust-vmm's vm-device: the bus routes an access to the device that covers it, with the
// offset from the device's base.
#ifndef XENKVM_COMPONENTS_DEVICES_BUS_H_
#define XENKVM_COMPONENTS_DEVICES_BUS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace xenkvm::devices {

// A device's registers. Accesses come from vCPU threads, possibly several at once: a device
// guards its own state. `data` is 1, 2, 4 or 8 bytes, little-endian.
class Device {
 public:
  virtual ~Device() = default;
  virtual void Read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void Write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus {
 public:
  // `name` ("port I/O", "MMIO") appears in errors.
  explicit Bus(std::string name) : name_(std::move(name)) {}

  // Refuses an empty or wrapping range and one that overlaps a registered device, naming it.
  absl::Status Register(uint64_t base, uint64_t size, std::shared_ptr<Device> device, std::string name);
  absl::Status Unregister(uint64_t base);

  // False when no device covers [address, address + size): the caller decides what an unclaimed
  // access does (reads of all-ones, ignored writes, as on a PC).
  bool Read(uint64_t address, std::span<uint8_t> data) const;
  bool Write(uint64_t address, std::span<const uint8_t> data) const;

 private:
  struct Entry {
    uint64_t size;
    std::shared_ptr<Device> device;
    std::string name;
  };
  // The entry covering the whole access, with its base.
  std::pair<uint64_t, std::shared_ptr<Device>> Find(uint64_t address, size_t size) const;

  const std::string name_;
  mutable absl::Mutex mutex_;
  std::map<uint64_t, Entry> devices_ ABSL_GUARDED_BY(mutex_);  // by base
};

// Little-endian value helpers for device register code.
uint64_t LoadLittleEndian(std::span<const uint8_t> data);
void StoreLittleEndian(uint64_t value, std::span<uint8_t> data);

}  // namespace xenkvm::devices

#endif  // XENKVM_COMPONENTS_DEVICES_BUS_H_
