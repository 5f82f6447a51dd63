// xen-disk throughput against fio on the same file, measured in the same run.
//
// The reference is fio with the psync engine (one pread/pwrite per I/O, from the page cache, one
// job): what a host process reading the image directly achieves. xen-disk is driven by the
// in-process blkfront through its real data path (ring in guest memory, grant mapping, the
// DiskRing's I/O thread, the image), at queue depth 1 (as fio) and with 32 requests per kick.
// It prints IOPS for each and the ratio xen-disk / fio.
//
//   bazel run -c opt //tests/bench:xen_disk_benchmark -- [--seconds N] [--file PATH]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/disk_ring.h"
#include "tests/frontends/blkfront.h"

namespace {

using namespace xenkvm;

constexpr uint64_t kFileBytes = 256ull << 20;
constexpr uint64_t kTableGfn = 0x10, kRingGfn = 0x20, kDataGfn = 0x100;
constexpr uint32_t kBuffers = 32;

// fio's IOPS for `rw` (randread or randwrite) of 4 KiB, or -1 with a message.
double FioIops(const std::string& file, const std::string& rw, int seconds) {
  const std::string command =
      absl::StrCat("fio --name=reference --filename=", file, " --rw=", rw,
                   " --bs=4k --ioengine=psync --invalidate=0 --numjobs=1 --iodepth=1 --time_based --runtime=", seconds,
                   " --size=", kFileBytes, " --output-format=terse --terse-version=3 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  pclose(pipe);
  // Terse v3: field 8 is read IOPS, field 49 write IOPS (1-based, ';'-separated).
  std::vector<std::string> fields;
  size_t start = output.find("3;fio-");
  if (start == std::string::npos) {
    std::fprintf(stderr, "fio failed: %s\n", output.c_str());
    return -1;
  }
  for (size_t at = start; at != std::string::npos;) {
    size_t next = output.find(';', at);
    fields.push_back(output.substr(at, next == std::string::npos ? std::string::npos : next - at));
    at = next == std::string::npos ? next : next + 1;
  }
  const size_t index = rw == "randread" ? 7 : 48;
  double iops = -1;
  if (fields.size() > index) (void)absl::SimpleAtod(fields[index], &iops);
  return iops;
}

double XenDiskIops(const std::string& file, bool write, uint32_t batch, int seconds) {
  auto memory = std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 4 << 20}})).value();
  xen::GrantTable grants(memory, 4);
  if (grants.MapFrame(0, kTableGfn) != 0) return -1;
  auto image = std::move(block::Image::Open(file, false)).value();
  testing::Blkfront front(memory, kTableGfn, kRingGfn);
  std::vector<uint32_t> refs;
  for (uint32_t i = 0; i < kBuffers; ++i) refs.push_back(front.Grant(kDataGfn + i, false));
  xenbus::DiskRing::Options options;
  options.ring_grefs = front.ring_grefs();
  options.persistent_grants = true;  // as Linux blkfront negotiates it
  auto ring = std::move(xenbus::DiskRing::Start(grants, *image, options, [] {})).value();
  std::mt19937_64 random(42);
  const uint64_t pages = kFileBytes / 4096;
  uint64_t done = 0;
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  while (absl::Now() < end) {
    for (uint32_t i = 0; i < batch; ++i) {
      const uint64_t sector = (random() % pages) * 8;
      front.Put(front.ReadWrite(write ? xenbus::blkif::kOpWrite : xenbus::blkif::kOpRead, done + i, sector,
                                {{refs[i % kBuffers], 0, 7}}));
    }
    front.Publish();
    ring->Kick();
    if (front.Take(batch).size() != batch) return -1;
    done += batch;
  }
  return static_cast<double>(done) / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 3;
  std::string file = "/tmp/xenkvm-bench-disk.img";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--seconds") (void)absl::SimpleAtoi(argv[i + 1], &seconds);
    if (flag == "--file") file = argv[i + 1];
  }
  {
    std::ofstream image(file, std::ios::binary);
    std::string chunk(1 << 20, 'x');
    for (uint64_t i = 0; i < kFileBytes >> 20; ++i) image << chunk;
  }
  std::printf("4 KiB random I/O on %s (%llu MiB, page cache), %d s each\n", file.c_str(),
              static_cast<unsigned long long>(kFileBytes >> 20), seconds);
  for (const char* rw : {"randread", "randwrite"}) {
    const double reference = FioIops(file, rw, seconds);
    const bool write = std::string(rw) == "randwrite";
    const double depth1 = XenDiskIops(file, write, 1, seconds);
    const double batched = XenDiskIops(file, write, 32, seconds);
    std::printf("%-9s  fio psync %9.0f IOPS | xen-disk qd1 %9.0f IOPS (ratio %.2f) | 32 per kick %9.0f IOPS (ratio %.2f)\n",
                rw, reference, depth1, reference > 0 ? depth1 / reference : 0, batched,
                reference > 0 ? batched / reference : 0);
  }
  unlink(file.c_str());
  return 0;
}
