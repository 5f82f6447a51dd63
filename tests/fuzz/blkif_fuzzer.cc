// Fuzz target: a hostile blkfront's requests. The input is a stream of ring slots (and indirect
// pages) for both ABIs, decoded against a small disk; then the same bytes drive a real DiskRing
// through an in-process frontend: slots put in the ring as they are, grants for a few pages, and
// a last raw producer index. The backend must answer or stop the ring, never crash or touch an
// ungranted page.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "components/block/image.h"
#include "components/memory/guest_memory.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/blkif.h"
#include "components/xenbus/disk_ring.h"
#include "spdlog/spdlog.h"
#include "tests/frontends/blkfront.h"

namespace {

using namespace xenkvm;

constexpr uint64_t kTableGfn = 0x10, kRingGfn = 0x20, kDataGfn = 0x30, kGuardGfn = 0x80;

const std::string& ImagePath() {
  static const std::string path = [] {
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string p = std::string(tmp ? tmp : "/tmp") + "/blkif_fuzzer.img";
    std::ofstream(p, std::ios::binary) << std::string(64 * 512, 'd');
    return p;
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)quiet;
  const xenbus::blkif::DiskLimits limits{64, (size & 1) != 0, true, 256};
  for (xenbus::blkif::Abi abi : {xenbus::blkif::Abi::k64, xenbus::blkif::Abi::k32}) {
    const size_t slot = xenbus::blkif::RequestSize(abi);
    for (size_t at = 0; at + slot <= size; at += slot) {
      xenbus::blkif::Decoded decoded = xenbus::blkif::DecodeRequest(abi, {data + at, slot}, limits);
      if (decoded.status == 0 && decoded.request.operation == xenbus::blkif::kOpIndirect) {
        (void)xenbus::blkif::DecodeIndirectSegments({data, size}, limits, decoded.request);
      }
    }
  }

  // The data path: the guard page holds a pattern nobody granted; it must stay as it is.
  static memory::GuestMemory* memory = new memory::GuestMemory(
      std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), 1 << 20}})).value());
  (void)memory->Zero(memory::GuestAddress(0), 1 << 20);
  (void)memory->WriteObject(memory::GuestAddress(kGuardGfn << 12), uint64_t{0x5afe5afe5afe5afe});
  xen::GrantTable grants(*memory, 2);
  if (grants.MapFrame(0, kTableGfn) != 0) abort();
  auto image = std::move(block::Image::Open(ImagePath(), false)).value();
  testing::Blkfront front(*memory, kTableGfn, kRingGfn);
  for (int i = 0; i < 4; ++i) front.Grant(kDataGfn + i, (i & 1) != 0);  // refs 9..12
  xenbus::DiskRing::Options options;
  options.ring_grefs = front.ring_grefs();
  options.persistent_grants = (size & 2) != 0;
  options.max_indirect_segments = 256;
  auto ring = std::move(xenbus::DiskRing::Start(grants, *image, options, [] {})).value();
  const size_t slot = xenbus::blkif::RequestSize(xenbus::blkif::Abi::k64);
  size_t put = 0;
  for (size_t at = 0; at + slot <= size && put < front.slots(); at += slot, ++put) front.Put({data + at, slot});
  front.Publish();
  if (size >= 4 && (data[0] & 0x80)) {
    uint32_t raw;
    std::memcpy(&raw, data + size - 4, 4);
    front.SetRequestProducer(raw);
  }
  ring->Kick();
  (void)front.Take(put, absl::Milliseconds(put ? 200 : 1));
  ring.reset();
  if (memory->ReadObject<uint64_t>(memory::GuestAddress(kGuardGfn << 12)).value() != 0x5afe5afe5afe5afe) abort();
  if (grants.Statistics().active != 0) abort();  // every mapping released
  return 0;
}
