// xen-disk against fio on the same file, measured in the same run, runs alternated.
//
// The reference is fio with io_uring at the same block size, queue depth, cache mode and job count
// (one) as the xen-disk run: what a host process doing the same I/O to the image achieves. Its
// buffers are shared memory (--iomem=mmapshared), as a guest's RAM is (a memfd): copies into
// shared memory's 4 KiB pages are ~9% slower here than into malloc's transparent huge pages, a
// cost of where the data goes, not of the backend. With --huge-pages both are on 2 MiB huge
// pages (the guest's RAM as xenkvm-vmm --huge-pages 2M has it, fio's buffers --iomem=shmhuge):
// direct I/O into 4 KiB pages reaches the device as a segment a page (a 1 MiB transfer as
// 1016 KiB + 8 KiB on a disk taking 254 segments a request), into huge pages as one. xen-disk
// is driven by the in-process blkfront through its real data path (ring in guest memory, grant
// mapping, the DiskRing's thread and I/O engine, the image), keeping QD requests in flight (a
// closed loop: each response is replaced by a new request). It kicks only when the backend asked
// (req_event), as Linux's blkfront does, asks for an event after each take (rsp_event, as
// blkfront's interrupt handler does), and waits for responses as a vCPU does: it polls (KVM's
// halt-polling rule, 10 to 200 us: blkfront.h), then sleeps until the backend's notification (an
// eventfd, written only while it sleeps). Its kicks are direct calls of DiskRing::Kick, on its
// thread as a vCPU's EVTCHNOP_send would be (small reads may be served there: disk_ring.h), and
// its notifications eventfd writes (no event channel, interrupt or VM exit). 1 MiB requests are INDIRECT (256
// segments), as Linux's blkfront sends them.
//
// The file's dirty pages are written back before every run of either. Prints IOPS and MB/s of
// each (medians of --runs), the ratio xen-disk / fio, and how often the frontend slept (each
// time woken by a notification, whose cost on this machine is measured first). The 1 GiB file
// is created for the run (--file must not exist: nothing of the user's is overwritten) and
// removed after it, on an interrupt too.
//
//   bazel run -c opt //tests/bench:xen_disk_benchmark -- [--seconds N] [--runs N] [--file PATH]
//       [--cache writeback|none] [--depths 1,8,32] [--engine auto|uring|threads]
//       [--workloads randread,randwrite,read,write] [--huge-pages]   (--help: the flags)
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "components/base/fd.h"
#include "components/base/lock_checks.h"
#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/disk_ring.h"
#include "tests/frontends/blkfront.h"

namespace {

using namespace xenkvm;

constexpr uint64_t kFileBytes = 1ull << 30;
constexpr uint64_t kTableGfn = 0x10, kTableFrames = 32, kRingGfn = 0x40, kIndirectGfn = 0x100, kDataGfn = 0x200;

struct Workload {
  const char* fio_rw;  // randread, randwrite, read, write
  uint32_t block_bytes;
  bool write() const { return std::string(fio_rw).find("write") != std::string::npos; }
  bool random() const { return std::string(fio_rw).rfind("rand", 0) == 0; }
};

constexpr Workload kWorkloads[] = {{"randread", 4096}, {"randwrite", 4096}, {"read", 1 << 20}, {"write", 1 << 20}};

struct Options {
  int seconds = 3;
  int runs = 3;
  std::string file;  // default: under /var/tmp (a disk, not tmpfs), named after the process
  block::CacheMode cache = block::CacheMode::kWriteback;
  std::vector<uint32_t> depths = {1, 8, 32};
  block::EngineChoice engine = block::EngineChoice::kAuto;
  std::vector<std::string> workloads = {"randread", "randwrite", "read", "write"};
  bool huge_pages = false;  // guest RAM and fio's buffers on 2 MiB huge pages
};

// `path` as fio's --filename value (':' separates files there) quoted for the shell.
std::string FioFilenameArgument(const std::string& path) {
  std::string quoted = "'";
  for (char c : path) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      if (c == ':') quoted += '\\';
      quoted += c;
    }
  }
  return quoted + "'";
}

// fio's IOPS, or why there are none.
absl::StatusOr<double> FioIops(const Options& options, const Workload& workload, uint32_t depth) {
  const std::string command = absl::StrCat(
      "fio --name=reference --filename=", FioFilenameArgument(options.file), " --rw=", workload.fio_rw, " --bs=", workload.block_bytes,
      " --ioengine=io_uring --iodepth=", depth, " --iodepth_batch_complete_max=", depth,
      " --direct=", options.cache == block::CacheMode::kNone ? 1 : 0,
      " --invalidate=0 --numjobs=1 --iomem=", options.huge_pages ? "shmhuge" : "mmapshared", " --time_based --runtime=", options.seconds, " --size=", kFileBytes,
      " --randrepeat=0 --output-format=terse --terse-version=3 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  pclose(pipe);
  size_t start = output.find("3;fio-");
  if (start == std::string::npos) return absl::UnavailableError(absl::StrCat("fio failed: ", output));
  // Terse v3: field 8 is read IOPS, field 49 write IOPS (1-based, ';'-separated).
  std::vector<std::string> fields = absl::StrSplit(output.substr(start), ';');
  const size_t index = workload.write() ? 48 : 7;
  double iops = -1;
  if (fields.size() <= index || !absl::SimpleAtod(fields[index], &iops)) {
    return absl::UnavailableError(absl::StrCat("fio's terse output has no IOPS: ", output));
  }
  return iops;
}

struct XenDiskRun {
  double iops = 0;
  double frontend_sleeps_per_second = 0;  // each a wake-up the backend's notification pays
};

// xen-disk's IOPS and how often its frontend slept, or why there are none.
absl::StatusOr<XenDiskRun> RunXenDisk(const Options& options, const Workload& workload, uint32_t depth) {
  const uint32_t pages_per_request = workload.block_bytes / 4096;
  uint64_t guest_bytes = (kDataGfn + uint64_t{depth} * pages_per_request + 16) << 12;
  if (options.huge_pages) guest_bytes = (guest_bytes + memory::kHugePageSize - 1) / memory::kHugePageSize * memory::kHugePageSize;
  absl::StatusOr<memory::GuestMemory> created = memory::GuestMemory::Create(
      {{memory::GuestAddress(0), guest_bytes}}, options.huge_pages ? memory::RamPages::k2MiB : memory::RamPages::k4KiB);
  if (!created.ok()) return created.status();
  memory::GuestMemory memory = std::move(*created);
  xen::GrantTable grants(memory, kTableFrames);
  for (uint32_t frame = 0; frame < kTableFrames; ++frame) {
    if (grants.MapFrame(frame, kTableGfn + frame) != 0) return absl::InternalError("the grant table's frames");
  }
  absl::StatusOr<std::unique_ptr<block::Image>> image = block::Image::Open(options.file, false, options.cache);
  if (!image.ok()) return image.status();
  testing::Blkfront front(memory, kTableGfn, kRingGfn);
  // Each slot of the closed loop has its own pages (and an indirect page for large requests).
  std::vector<std::vector<testing::Blkfront::Segment>> segments(depth);
  std::vector<uint32_t> indirect_grefs(depth);
  for (uint32_t slot = 0; slot < depth; ++slot) {
    for (uint32_t page = 0; page < pages_per_request; ++page) {
      segments[slot].push_back({front.Grant(kDataGfn + slot * pages_per_request + page, false), 0, 7});
    }
    indirect_grefs[slot] = front.Grant(kIndirectGfn + slot, false);  // writable and kept, as Linux's blkfront
  }
  xenbus::DiskRing::Options ring_options;
  ring_options.ring_grefs = front.ring_grefs();
  ring_options.persistent_grants = true;  // as Linux blkfront negotiates it
  ring_options.max_indirect_segments = 256;
  ring_options.engine = options.engine;
  absl::StatusOr<std::unique_ptr<xenbus::DiskRing>> ring =
      xenbus::DiskRing::Start(grants, **image, ring_options, front.EventNotifier());
  if (!ring.ok()) return ring.status();

  // Each slot's request is built once (its indirect page written once); only the sector changes.
  const uint8_t operation = workload.write() ? xenbus::blkif::kOpWrite : xenbus::blkif::kOpRead;
  std::vector<std::vector<uint8_t>> requests;
  for (uint32_t slot = 0; slot < depth; ++slot) {
    requests.push_back(pages_per_request == 1
                           ? front.ReadWrite(operation, slot, 0, segments[slot])
                           : front.Indirect(operation, slot, 0, segments[slot], kIndirectGfn + slot, indirect_grefs[slot]));
  }
  std::mt19937_64 random(42);
  const uint64_t blocks = kFileBytes / workload.block_bytes;
  uint64_t next_block = 0;
  auto put = [&](uint32_t slot) {
    const uint64_t block = workload.random() ? random() % blocks : next_block++ % blocks;
    const uint64_t sector = block * (workload.block_bytes / 512);
    std::memcpy(requests[slot].data() + 16, &sector, sizeof(sector));  // the 64-bit ABI's sector_number
    front.Put(requests[slot]);
  };
  for (uint32_t slot = 0; slot < depth; ++slot) put(slot);
  front.Publish();
  (*ring)->Kick();
  uint64_t done = 0;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(options.seconds);
  while (absl::Now() < end) {
    std::vector<testing::Blkfront::Response> responses = front.Take(1, absl::Seconds(10), /*all=*/true);
    if (responses.empty()) return absl::DeadlineExceededError("xen-disk answered nothing for 10 s");
    for (const auto& response : responses) {
      if (response.status != 0) {
        return absl::InternalError(absl::StrCat("xen-disk answered request ", response.id, " with status ",
                                                response.status, " (-1: the I/O on the file failed)"));
      }
      put(static_cast<uint32_t>(response.id));
      // Each request published as it is put, as Linux's blkfront does (flush_requests in every
      // blkif_queue_rq), so the backend starts on it while the rest are built; a kick only when
      // the backend asked for one (it sleeps).
      if (front.PublishAndCheckNotify()) (*ring)->Kick();
    }
    done += responses.size();
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const uint64_t sleeps = front.sleeps();
  (void)front.Take(depth);  // the last ones in flight
  return XenDiskRun{static_cast<double>(done) / seconds, static_cast<double>(sleeps) / seconds};
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? -1 : values[values.size() / 2];
}

// The CPUs this process may run on (none when the kernel will not say).
cpu_set_t AllowedCpus() {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) CPU_ZERO(&allowed);
  return allowed;
}

// The floor under any backend on a thread of its own: the round trip of a hand-off between two
// spinning threads (a store one way, a store back), in nanoseconds; -1 with one CPU, where two
// spinning threads take turns a time slice each.
double HandOffRoundTripNs() {
  const cpu_set_t allowed = AllowedCpus();
  if (CPU_COUNT(&allowed) < 2) return -1;
  std::atomic<uint64_t> ping{0}, pong{0};
  constexpr uint64_t kTrips = 200000;
  std::thread echo([&] {
    for (uint64_t seen = 1; seen <= kTrips; ++seen) {
      while (ping.load(std::memory_order_acquire) != seen) __builtin_ia32_pause();
      pong.store(seen, std::memory_order_release);
    }
  });
  const absl::Time start = absl::Now();
  for (uint64_t trip = 1; trip <= kTrips; ++trip) {
    ping.store(trip, std::memory_order_release);
    while (pong.load(std::memory_order_acquire) != trip) __builtin_ia32_pause();
  }
  const double ns = absl::ToDoubleNanoseconds(absl::Now() - start) / kTrips;
  echo.join();
  return ns;
}

struct WakeUpCost {
  double us = -1;
  bool across_cpus = false;  // the waker and the sleeper on two CPUs, as the ring's and the frontend's
};

// What waking a sleeping thread costs here, from the eventfd write to the sleeper running
// (median of 200): what the backend's notification costs a frontend that slept. Each sleeper
// waits 1 ms first, so its CPU idles as a halted vCPU's does.
WakeUpCost MeasureWakeUp() {
  constexpr int kWakeUps = 200;
  const cpu_set_t allowed = AllowedCpus();
  const bool two_cpus = CPU_COUNT(&allowed) >= 2;
  auto pin_to_nth = [&](int nth) {  // the nth allowed CPU, so the wake-up crosses CPUs
    if (!two_cpus) return;
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &allowed) || seen++ != nth) continue;
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      (void)pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      return;
    }
  };
  base::Fd event(eventfd(0, EFD_CLOEXEC));
  if (!event.valid()) return {};
  std::atomic<int64_t> woken_ns{0};
  std::atomic<bool> done{false};
  std::thread sleeper([&] {
    pin_to_nth(1);
    uint64_t count = 0;
    while (!done.load()) {
      const ssize_t n = read(event.get(), &count, sizeof(count));
      if (n < 0 && errno == EINTR) continue;
      if (n != sizeof(count)) return;
      woken_ns.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_release);
    }
  });
  std::vector<double> samples;
  std::thread waker([&] {
    pin_to_nth(0);
    for (int i = 0; i < kWakeUps; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      woken_ns.store(0, std::memory_order_relaxed);
      const int64_t written_ns = std::chrono::steady_clock::now().time_since_epoch().count();
      const uint64_t one = 1;
      if (write(event.get(), &one, sizeof(one)) != sizeof(one)) break;
      int64_t woken = 0;
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(1);  // the sleeper is gone
      while ((woken = woken_ns.load(std::memory_order_acquire)) == 0 && std::chrono::steady_clock::now() < give_up) {
        __builtin_ia32_pause();
      }
      if (woken == 0) break;
      samples.push_back(static_cast<double>(woken - written_ns) / 1000);
    }
  });
  waker.join();
  done.store(true);
  const uint64_t one = 1;
  (void)!write(event.get(), &one, sizeof(one));
  sleeper.join();
  return {Median(samples), two_cpus};
}

// Writes the file's dirty pages back before a run, so no run pays for the previous one's
// writeback (the kernel's flusher threads take a CPU from whichever run comes next).
void WriteBack(const std::string& file) {
  const int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)fdatasync(fd);
  close(fd);
}

// The benchmark's file, removed on SIGINT and SIGTERM too (unlink is async-signal-safe).
char created_file[4096] = {};

void RemoveFileAndExit(int signal) {
  if (created_file[0] != 0) unlink(created_file);
  _exit(128 + signal);
}

// Creates `path` (which must not exist) holding kFileBytes.
absl::Status CreateFile(const std::string& path) {
  if (path.size() >= sizeof(created_file)) return absl::InvalidArgumentError(absl::StrCat("--file: ", path, " is too long"));
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) {
    return absl::AlreadyExistsError(absl::StrCat("--file ", path,
                                                 " exists: the benchmark writes 1 GiB into a file of its own and removes "
                                                 "it afterwards; name a path that does not exist"));
  }
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("--file ", path, ": ", std::strerror(errno)));
  std::memcpy(created_file, path.c_str(), path.size() + 1);
  struct sigaction action = {};
  action.sa_handler = RemoveFileAndExit;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  const std::string chunk(1 << 20, 'x');
  for (uint64_t written = 0; written < kFileBytes;) {
    const ssize_t n = write(fd, chunk.data(), std::min<uint64_t>(chunk.size(), kFileBytes - written));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : ENOSPC;
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("writing 1 GiB into ", path, ": ", std::strerror(error), " (--file elsewhere?)"));
    }
    written += static_cast<uint64_t>(n);
  }
  close(fd);
  return absl::OkStatus();
}

// Parses the flags into *options; a non-negative return is the exit status (--help, or an error).
int ParseOptions(int argc, char** argv, Options* options) {
  CLI::App app("xen-disk (in-process blkfront, DiskRing, I/O engine) against fio with io_uring on the same 1 GiB file",
               "xen_disk_benchmark");
  std::string cache = "writeback", engine = "auto";
  app.add_option("--seconds", options->seconds, "seconds a run (default 3)")->check(CLI::Range(1, 3600));
  app.add_option("--runs", options->runs, "runs of each, alternated; the median is printed (default 3)")
      ->check(CLI::Range(1, 100));
  app.add_option("--file", options->file,
                 "the file to create for the run and remove after it; must not exist (default "
                 "/var/tmp/xenkvm-bench-disk-PID.img)");
  app.add_option("--cache", cache, "writeback (the page cache) or none (O_DIRECT), for both (default writeback)")
      ->check([](const std::string& value) {  // block's one parser of cache modes decides
        absl::StatusOr<block::CacheMode> mode = block::ParseCacheMode(value);
        return mode.ok() ? std::string() : std::string(mode.status().message());
      });
  app.add_option("--depths", options->depths, "queue depths, 1 to 32 (default 1,8,32)")
      ->delimiter(',')
      ->check(CLI::Range(1, 32));
  const std::map<std::string, block::EngineChoice> engines = {
      {"auto", block::EngineChoice::kAuto}, {"uring", block::EngineChoice::kUring}, {"threads", block::EngineChoice::kThreads}};
  app.add_option("--engine", engine, "xen-disk's I/O engine: auto, uring or threads (default auto)")
      ->check(CLI::IsMember(engines));
  app.add_option("--workloads", options->workloads,
                 "of randread, randwrite (4 KiB), read, write (1 MiB sequential) (default all four)")
      ->delimiter(',')
      ->check(CLI::IsMember([] {
        std::vector<std::string> names;
        for (const Workload& workload : kWorkloads) names.push_back(workload.fio_rw);
        return names;
      }()));
  app.add_flag("--huge-pages", options->huge_pages,
               "guest RAM on 2 MiB huge pages (as xenkvm-vmm --huge-pages 2M) and fio's buffers too "
               "(--iomem=shmhuge); needs about 20 free in the host's pool (/proc/sys/vm/nr_hugepages)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int status = app.exit(error);  // prints --help, or what was wrong with the flags
    return status == 0 ? 0 : 2;
  }
  options->cache = *block::ParseCacheMode(cache);  // both checked above
  options->engine = engines.at(engine);
  if (options->file.empty()) options->file = absl::StrCat("/var/tmp/xenkvm-bench-disk-", getpid(), ".img");
  return -1;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "xen_disk_benchmark: %s\n", std::string(status.message()).c_str());
  if (created_file[0] != 0) unlink(created_file);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  base::DisableLockOrderChecks();  // as in xenkvm-vmm
  Options options;
  if (int status = ParseOptions(argc, argv, &options); status >= 0) return status;
  if (std::system("fio --version > /dev/null 2>&1") != 0) {
    return Fail(absl::FailedPreconditionError("fio, the reference, is not installed (apt-get install fio)"));
  }
  if (absl::Status created = CreateFile(options.file); !created.ok()) return Fail(created);
  std::printf("xen-disk vs fio (io_uring, 1 job, shared-memory buffers on %s) on %s (%llu MiB), cache=%s, %d s per run, median of %d alternated runs\n",
              options.huge_pages ? "2 MiB huge pages" : "4 KiB pages", options.file.c_str(), static_cast<unsigned long long>(kFileBytes >> 20),
              block::CacheModeName(options.cache), options.seconds, options.runs);
  if (const double hand_off_ns = HandOffRoundTripNs(); hand_off_ns > 0) {
    std::printf("hand-off round trip between two threads here: %.0f ns (in every request the ring's thread serves: the frontend's and the ring's)\n",
                hand_off_ns);
  } else {
    std::printf("hand-off round trip between two threads: not measured, one CPU here (the frontend and the ring's thread take turns on it)\n");
  }
  const WakeUpCost wake_up = MeasureWakeUp();
  std::printf("wake-up of a thread asleep on %s CPU here: %.1f us (the notification of a frontend that slept: one "
              "whose wait outlasted its polling, 200 us at most; fio's one thread is woken by the disk's interrupt)\n",
              wake_up.across_cpus ? "another" : "the same", wake_up.us);
  for (const Workload& workload : kWorkloads) {
    if (std::find(options.workloads.begin(), options.workloads.end(), workload.fio_rw) == options.workloads.end()) continue;
    for (uint32_t depth : options.depths) {
      std::vector<double> fio, xen, sleeps;
      for (int run = 0; run < options.runs; ++run) {
        WriteBack(options.file);
        absl::StatusOr<double> reference = FioIops(options, workload, depth);
        if (!reference.ok()) return Fail(reference.status());
        fio.push_back(*reference);
        WriteBack(options.file);
        absl::StatusOr<XenDiskRun> ours = RunXenDisk(options, workload, depth);
        if (!ours.ok()) {
          return Fail(absl::Status(ours.status().code(), absl::StrCat(workload.fio_rw, " QD", depth, ", cache=",
                                                                       block::CacheModeName(options.cache), ": ",
                                                                       ours.status().message())));
        }
        xen.push_back(ours->iops);
        sleeps.push_back(ours->frontend_sleeps_per_second);
      }
      const double reference = Median(fio), ours = Median(xen), slept = Median(sleeps);
      const double mb = workload.block_bytes / 1e6;
      // The share of the run spent waking the frontend: its next requests wait meanwhile, and a
      // disk that had answered all it had idles (fio's one thread has no such hand-off).
      std::printf("%-9s %4u KiB QD%-2u  fio %9.0f IOPS %7.0f MB/s | xen-disk %9.0f IOPS %7.0f MB/s | ratio %.2f"
                  " | frontend woken %.0f/s (wake-ups %.0f%% of the run)\n",
                  workload.fio_rw, workload.block_bytes / 1024, depth, reference, reference * mb, ours, ours * mb,
                  reference > 0 ? ours / reference : 0, slept, wake_up.us > 0 ? slept * wake_up.us / 1e4 : 0);
      std::fflush(stdout);
    }
  }
  unlink(options.file.c_str());
  return 0;
}
