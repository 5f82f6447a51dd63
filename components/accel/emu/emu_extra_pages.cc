// Extra pages on an emu engine: pages shown at guest-physical addresses outside RAM (grant-table
// and shared-info frames). Below the private window such an address lies in an MMIO window, which
// is split around the page (Unicorn's own split would keep each piece's old base, and an MMIO
// offset would then name the wrong address); above it the page is simply mapped.
#include "absl/strings/str_format.h"
#include "components/accel/emu/emu_vcpu.h"
#include "components/base/status.h"

namespace xenkvm::accel::emu {

using memory::kPageSize;

absl::Status EmuVcpu::SyncExtraPages() {
  const uint64_t generation = vm_.extra_generation.load(std::memory_order_acquire);
  if (generation == extra_generation_) return absl::OkStatus();
  std::map<uint64_t, uint8_t*> wanted;
  {
    absl::MutexLock lock(&vm_.extra_mutex);
    wanted = vm_.extra_pages;
  }
  for (auto shown = extra_shown_.begin(); shown != extra_shown_.end();) {
    auto want = wanted.find(shown->first);
    if (want != wanted.end() && want->second == shown->second) {
      ++shown;
      continue;
    }
    XENKVM_RETURN_IF_ERROR(HidePage(shown->first));
    shown = extra_shown_.erase(shown);
  }
  for (const auto& [address, host] : wanted) {
    if (extra_shown_.contains(address)) continue;
    XENKVM_RETURN_IF_ERROR(ShowPage(address, host));
    extra_shown_[address] = host;
  }
  extra_generation_ = generation;
  return absl::OkStatus();
}

absl::Status EmuVcpu::ShowPage(uint64_t address, uint8_t* host) {
  if (address < kWindowBase + kWindowSize && address + kPageSize > kWindowBase) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a page at %#x would overlap the emu backend's private window", address));
  }
  for (auto window = mmio_windows_.begin(); window != mmio_windows_.end(); ++window) {
    if (address < (*window)->base || address >= (*window)->end) continue;
    const uint64_t base = (*window)->base, end = (*window)->end;
    if (uc_err err = uc_mem_unmap(uc_, base, end - base); err != UC_ERR_OK) {
      return UcError(err, absl::StrFormat("uc_mem_unmap(MMIO %#x..%#x)", base, end - 1));
    }
    mmio_windows_.erase(window);
    XENKVM_RETURN_IF_ERROR(MapMmio(base, address));
    XENKVM_RETURN_IF_ERROR(MapMmio(address + kPageSize, end));
    break;
  }
  if (uc_err err = uc_mem_map_ptr(uc_, address, kPageSize, UC_PROT_ALL, host); err != UC_ERR_OK) {
    return UcError(err, absl::StrFormat("uc_mem_map_ptr(extra page at %#x)", address));
  }
  return absl::OkStatus();
}

absl::Status EmuVcpu::HidePage(uint64_t address) {
  if (uc_err err = uc_mem_unmap(uc_, address, kPageSize); err != UC_ERR_OK) {
    return UcError(err, absl::StrFormat("uc_mem_unmap(extra page at %#x)", address));
  }
  // Below the window the page was MMIO before: it is again (as a window of its own).
  if (address < kWindowBase) return MapMmio(address, address + kPageSize);
  return absl::OkStatus();
}

}  // namespace xenkvm::accel::emu
