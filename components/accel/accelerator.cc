#include <cpuid.h>
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

namespace {

struct TscSample {
  uint64_t ns = 0;
  uint64_t tsc = 0;
};

TscSample SampleTsc() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
  return {static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec), __rdtsc()};
}

// Taken when the program loads: a measurement's interval is then the start-up work itself.
const TscSample kLoadSample = SampleTsc();

// What the CPU or the hypervisor says: leaf 0x15 (crystal clock and TSC ratio, Intel) or leaf
// 0x40000010 (the TSC rate in kHz, from hypervisors that offer it: VMware's, KVM's on request).
uint64_t CpuidTscKhz() {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) >= 0x15) {
    __cpuid_count(0x15, 0, eax, ebx, ecx, edx);
    if (eax != 0 && ebx != 0 && ecx != 0) return uint64_t{ecx} * ebx / eax / 1000;
  }
  __cpuid(0x40000000, eax, ebx, ecx, edx);
  if (eax >= 0x40000010 && eax < 0x40000100) {
    __cpuid(0x40000010, eax, ebx, ecx, edx);
    if (eax != 0) return eax;
  }
  return 0;
}

// Against CLOCK_MONOTONIC_RAW since the program loaded, waiting only for what is left of 5 ms
// (tens of ppm of error from the clock reads).
uint64_t MeasuredTscKhz() {
  constexpr uint64_t kInterval = 5'000'000;
  TscSample now = SampleTsc();
  if (now.ns - kLoadSample.ns < kInterval) {
    timespec wait{0, static_cast<long>(kInterval - (now.ns - kLoadSample.ns))};
    while (nanosleep(&wait, &wait) != 0) {
    }
    now = SampleTsc();
  }
  const uint64_t tsc = now.tsc - kLoadSample.tsc, ns = now.ns - kLoadSample.ns;
  // Round to the nearest MHz, as CPUs' nominal TSC rates are whole MHz.
  return (static_cast<unsigned __int128>(tsc) * 1'000'000 / ns + 500) / 1000 * 1000;
}

}  // namespace

uint64_t HostTscKhz() {
  static const uint64_t khz = [] {
    const uint64_t reported = CpuidTscKhz();
    return reported != 0 ? reported : MeasuredTscKhz();
  }();
  return khz;
}

void NameVcpuThread(uint32_t id) {
  const std::string name = "vcpu" + std::to_string(id);
  pthread_setname_np(pthread_self(), name.c_str());
}

}  // namespace xenkvm::accel
