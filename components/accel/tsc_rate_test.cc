#include <x86intrin.h>

#include <chrono>
#include <thread>

#include "components/accel/accelerator.h"
#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

// The rate the guests get, however it was found (CPUID or the load-time measurement), agrees
// with the TSC's pace over a tenth of a second now.
TEST(TscRateTest, HostTscKhzMatchesTheTscsPace) {
  const uint64_t khz = HostTscKhz();
  const auto start = std::chrono::steady_clock::now();
  const uint64_t start_tsc = __rdtsc();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const uint64_t tsc = __rdtsc() - start_tsc;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double measured_khz = static_cast<double>(tsc) / seconds / 1000;
  EXPECT_NEAR(static_cast<double>(khz), measured_khz, measured_khz * 0.005) << "kHz";
  EXPECT_EQ(HostTscKhz(), khz);  // found once
}

}  // namespace
}  // namespace xenkvm::accel
