#include "components/devices/bus.h"

#include "absl/strings/str_format.h"

namespace xenkvm::devices {

absl::Status Bus::Register(uint64_t base, uint64_t size, std::shared_ptr<Device> device, std::string name) {
  if (size == 0 || base + size - 1 < base) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s bus: %s at %#x has an empty or wrapping range (size %#x)", name_, name, base, size));
  }
  absl::MutexLock lock(&mutex_);
  const uint64_t last = base + size - 1;
  for (const auto& [other_base, other] : devices_) {
    if (base <= other_base + other.size - 1 && other_base <= last) {
      return absl::AlreadyExistsError(absl::StrFormat("%s bus: %s at %#x..%#x overlaps %s at %#x..%#x", name_,
                                                      name, base, last, other.name, other_base,
                                                      other_base + other.size - 1));
    }
  }
  devices_.emplace(base, Entry{size, std::move(device), std::move(name)});
  return absl::OkStatus();
}

absl::Status Bus::Unregister(uint64_t base) {
  absl::MutexLock lock(&mutex_);
  if (devices_.erase(base) == 0) {
    return absl::NotFoundError(absl::StrFormat("%s bus: no device registered at %#x", name_, base));
  }
  return absl::OkStatus();
}

std::pair<uint64_t, std::shared_ptr<Device>> Bus::Find(uint64_t address, size_t size) const {
  absl::ReaderMutexLock lock(&mutex_);
  auto it = devices_.upper_bound(address);
  if (it == devices_.begin()) return {0, nullptr};
  --it;
  const uint64_t offset = address - it->first;
  if (offset >= it->second.size || size > it->second.size - offset) return {0, nullptr};
  return {it->first, it->second.device};
}

bool Bus::Read(uint64_t address, std::span<uint8_t> data) const {
  auto [base, device] = Find(address, data.size());
  if (!device) return false;
  device->Read(address - base, data);
  return true;
}

bool Bus::Write(uint64_t address, std::span<const uint8_t> data) const {
  auto [base, device] = Find(address, data.size());
  if (!device) return false;
  device->Write(address - base, data);
  return true;
}

uint64_t LoadLittleEndian(std::span<const uint8_t> data) {
  uint64_t value = 0;
  for (size_t i = data.size(); i-- > 0;) value = (value << 8) | data[i];
  return value;
}

void StoreLittleEndian(uint64_t value, std::span<uint8_t> data) {
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(value >> (8 * i));
}

}  // namespace xenkvm::devices
