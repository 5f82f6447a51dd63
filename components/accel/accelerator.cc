#include <x86intrin.h>

#include <ctime>

#include "absl/strings/str_format.h"
#include "components/accel/accelerator.h"

#include <pthread.h>

#include <string>

namespace xenkvm::accel {

absl::Status CheckExternalVector(uint8_t vector) {
  if (vector >= 0x10) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "interrupt vector %#x is an exception vector; external interrupts use 0x10..0xff", vector));
}

uint64_t HostTscKhz() {
  static const uint64_t khz = [] {
    auto now_ns = [] {
      timespec ts{};
      clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
      return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
    };
    const uint64_t start_ns = now_ns();
    const uint64_t start_tsc = __rdtsc();
    timespec wait{0, 5'000'000};  // 5 ms: tens of ppm of error from the clock reads
    while (nanosleep(&wait, &wait) != 0) {
    }
    const uint64_t tsc = __rdtsc() - start_tsc;
    const uint64_t ns = now_ns() - start_ns;
    // Round to the nearest MHz, as CPUs' nominal TSC rates are whole MHz.
    return (tsc * 1'000'000 / ns + 500) / 1000 * 1000;
  }();
  return khz;
}

void NameVcpuThread(uint32_t id) {
  const std::string name = "vcpu" + std::to_string(id);
  pthread_setname_np(pthread_self(), name.c_str());
}

}  // namespace xenkvm::accel
