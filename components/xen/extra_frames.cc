#include "components/xen/extra_frames.h"

#include "spdlog/spdlog.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kPageShift = 12;
// The IOAPIC, HPET, local APIC and firmware pages at the top of the 32-bit space.
constexpr uint64_t kPlatformPagesStart = 0xfec00000;
constexpr uint64_t kPlatformPagesEnd = uint64_t{1} << 32;

}  // namespace

int64_t ExtraFrames::Back(uint64_t gfn) {
  if (gfn >= (kAddressLimit >> kPageShift)) return -XEN_EINVAL;
  const memory::GuestAddress address(gfn << kPageShift);
  if (memory_.FindRegion(address) != nullptr) return 0;  // RAM
  if (address.value() >= kPlatformPagesStart && address.value() < kPlatformPagesEnd) return -XEN_EINVAL;
  absl::MutexLock lock(&mutex_);
  if (frames_.contains(gfn)) return 0;
  absl::StatusOr<uint8_t*> host = memory_.MapExtraPage(address);
  if (!host.ok()) {
    spdlog::warn("Xen shim: no backing for guest frame {:#x}: {}", gfn, std::string(host.status().message()));
    return -XEN_ENOMEM;
  }
  if (absl::Status shown = accelerator_.ShowExtraPage(address.value(), *host); !shown.ok()) {
    spdlog::warn("Xen shim: cannot show guest frame {:#x}: {}", gfn, std::string(shown.message()));
    (void)memory_.UnmapExtraPage(address);
    return -XEN_ENOMEM;
  }
  frames_.insert(gfn);
  spdlog::debug("Xen shim: guest frame {:#x} (outside RAM) backed by an extra page", gfn);
  return 0;
}

void ExtraFrames::ReleaseUnused(const std::function<bool(uint64_t gfn)>& in_use) {
  absl::MutexLock lock(&mutex_);
  for (auto frame = frames_.begin(); frame != frames_.end();) {
    if (in_use(*frame)) {
      ++frame;
      continue;
    }
    const uint64_t address = *frame << kPageShift;
    if (absl::Status hidden = accelerator_.HideExtraPage(address); !hidden.ok()) {
      spdlog::warn("Xen shim: hiding guest frame {:#x}: {}", *frame, std::string(hidden.message()));
    }
    (void)memory_.UnmapExtraPage(memory::GuestAddress(address));
    frame = frames_.erase(frame);
  }
}

std::set<uint64_t> ExtraFrames::frames() const {
  absl::MutexLock lock(&mutex_);
  return frames_;
}

}  // namespace xenkvm::xen
