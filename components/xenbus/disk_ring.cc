#include "components/xenbus/disk_ring.h"

#include <algorithm>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {
namespace {

constexpr uint64_t kRequestProducer = 0, kRequestEvent = 4, kResponseProducer = 8, kResponseEvent = 12;

memory::GuestAddress At(uint64_t gpa) { return memory::GuestAddress(gpa); }

}  // namespace

absl::StatusOr<std::unique_ptr<DiskRing>> DiskRing::Start(const memory::GuestMemory& memory, xen::GrantTable& grants,
                                                          block::Image& image, Options options,
                                                          std::function<void()> notify) {
  auto ring = std::unique_ptr<DiskRing>(new DiskRing(memory, grants, image, options, std::move(notify)));
  if (int16_t status = grants.Map(options.ring_gref, /*readonly=*/false, &ring->ring_); status != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("xen-disk: the frontend's ring-ref ", options.ring_gref, " cannot be mapped (GNTST ", status, ")"));
  }
  // Both ends start where the responses are: requests after them are still to be answered.
  ring->response_producer_ = memory.AtomicLoad<uint32_t>(At(ring->RingAddress(kResponseProducer))).value_or(0);
  ring->request_consumer_ = ring->response_producer_;
  ring->thread_ = std::thread([raw = ring.get()] { raw->Run(); });
  ring->Kick();
  return ring;
}

DiskRing::DiskRing(const memory::GuestMemory& memory, xen::GrantTable& grants, block::Image& image, Options options,
                   std::function<void()> notify)
    : memory_(memory),
      grants_(grants),
      image_(image),
      options_(options),
      limits_{image.sectors(), image.read_only(), options.discard && image.supports_discard(),
              options.max_indirect_segments},
      slots_(blkif::RingSlots(options.abi, 1)),
      notify_(std::move(notify)) {}

DiskRing::~DiskRing() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  for (auto& [gref, mapping] : persistent_) grants_.Unmap(mapping);
  grants_.Unmap(ring_);
}

void DiskRing::Kick() {
  absl::MutexLock lock(&mutex_);
  kicked_ = true;
}

DiskRingStatistics DiskRing::Statistics() const {
  absl::MutexLock lock(&mutex_);
  return statistics_;
}

void DiskRing::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      mutex_.Await(absl::Condition(
          +[](DiskRing* ring) ABSL_EXCLUSIVE_LOCKS_REQUIRED(ring->mutex_) { return ring->kicked_ || ring->stopping_; },
          this));
      if (stopping_) return;
      kicked_ = false;
      if (statistics_.broken) continue;
    }
    if (!ProcessRing()) {
      spdlog::warn("xen-disk {}: the frontend broke its ring (a request index out of range); it is no longer served",
                   image_.path());
      absl::MutexLock lock(&mutex_);
      statistics_.broken = true;
    }
  }
}

bool DiskRing::ProcessRing() {
  const size_t slot_size = blkif::RequestSize(options_.abi);
  std::vector<uint8_t> slot(slot_size);
  while (true) {
    absl::StatusOr<uint32_t> producer = memory_.AtomicLoad<uint32_t>(At(RingAddress(kRequestProducer)));
    if (!producer.ok() || *producer - request_consumer_ > slots_) return false;
    const uint32_t published = response_producer_;
    while (request_consumer_ != *producer) {
      // Copied once; only the copy is decoded.
      if (!memory_.Read(At(RingAddress(blkif::kRingHeaderSize + (request_consumer_ % slots_) * slot_size)), slot).ok()) {
        return false;
      }
      ++request_consumer_;
      const absl::Time taken = absl::Now();
      blkif::Decoded decoded = blkif::DecodeRequest(options_.abi, slot, limits_);
      const int16_t status = decoded.status == blkif::kStatusOkay ? Handle(decoded.request) : decoded.status;
      const double seconds = absl::ToDoubleSeconds(absl::Now() - taken);
      {
        absl::MutexLock lock(&mutex_);
        ++statistics_.requests;
        if (status == blkif::kStatusError) ++statistics_.errors;
        if (status == blkif::kStatusNotSupported) ++statistics_.unsupported;
        const size_t bucket = static_cast<size_t>(
            std::lower_bound(kLatencyBounds.begin(), kLatencyBounds.end(), seconds) - kLatencyBounds.begin());
        ++statistics_.latency_counts[bucket];
        statistics_.latency_seconds_sum += seconds;
      }
      const std::vector<uint8_t> response =
          blkif::EncodeResponse(options_.abi, decoded.request.id, decoded.request.data_operation, status);
      if (!memory_.Write(At(RingAddress(blkif::kRingHeaderSize + (response_producer_ % slots_) * slot_size)), response)
               .ok()) {
        return false;
      }
      ++response_producer_;
    }
    // Publish the responses; notify only if the frontend asked to hear about these (rsp_event).
    if (response_producer_ != published) {
      (void)memory_.AtomicStore<uint32_t>(At(RingAddress(kResponseProducer)), response_producer_);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const uint32_t event = memory_.AtomicLoad<uint32_t>(At(RingAddress(kResponseEvent))).value_or(published);
      if (response_producer_ - event < response_producer_ - published) notify_();
    }
    // Ask for an event at the next request, then look once more (the frontend may have just added one).
    (void)memory_.AtomicStore<uint32_t>(At(RingAddress(kRequestEvent)), request_consumer_ + 1);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    absl::StatusOr<uint32_t> again = memory_.AtomicLoad<uint32_t>(At(RingAddress(kRequestProducer)));
    if (!again.ok() || *again == request_consumer_) return true;
  }
}

int16_t DiskRing::Handle(blkif::Request& request) {
  switch (request.operation) {
    case blkif::kOpFlush:
      if (!options_.flush) return blkif::kStatusNotSupported;
      if (!image_.Flush().ok()) return blkif::kStatusError;
      {
        absl::MutexLock lock(&mutex_);
        ++statistics_.flushes;
      }
      return blkif::kStatusOkay;
    case blkif::kOpDiscard:
      if (!image_.Discard(request.sector * block::kSectorSize, request.discard_sectors * block::kSectorSize).ok()) {
        return blkif::kStatusError;
      }
      {
        absl::MutexLock lock(&mutex_);
        ++statistics_.discards;
      }
      return blkif::kStatusOkay;
    case blkif::kOpIndirect: {
      // The segment pages: mapped read-only, copied once, released.
      std::vector<uint8_t> pages(request.indirect_grefs.size() * 4096);
      for (size_t i = 0; i < request.indirect_grefs.size(); ++i) {
        xen::GrantTable::Mapping mapping;
        if (grants_.Map(request.indirect_grefs[i], /*readonly=*/true, &mapping) != 0) return blkif::kStatusError;
        const bool copied = memory_.Read(At(mapping.gfn << 12), std::span<uint8_t>(pages.data() + i * 4096, 4096)).ok();
        grants_.Unmap(mapping);
        if (!copied) return blkif::kStatusError;
      }
      if (int16_t status = blkif::DecodeIndirectSegments(pages, limits_, request); status != blkif::kStatusOkay) {
        return status;
      }
      return Transfer(request);
    }
    default:
      return Transfer(request);  // READ, WRITE
  }
}

bool DiskRing::MapSegment(uint32_t gref, bool device_writes, xen::GrantTable::Mapping* mapping, bool* transient) {
  if (options_.persistent_grants) {
    if (auto found = persistent_.find(gref); found != persistent_.end()) {
      *mapping = found->second;
      *transient = false;
      return true;
    }
    // Persistent grants are granted writable; keep it if there is room.
    if (persistent_.size() < options_.max_persistent_grants && grants_.Map(gref, /*readonly=*/false, mapping) == 0) {
      persistent_.emplace(gref, *mapping);
      *transient = false;
      absl::MutexLock lock(&mutex_);
      statistics_.persistent_grants = persistent_.size();
      return true;
    }
  }
  *transient = true;
  return grants_.Map(gref, /*readonly=*/!device_writes, mapping) == 0;
}

int16_t DiskRing::Transfer(const blkif::Request& request) {
  const bool device_writes = request.data_operation == blkif::kOpRead;  // into the guest's pages
  std::vector<xen::GrantTable::Mapping> mappings(request.segments.size());
  std::vector<bool> transient(request.segments.size(), false);
  auto release = [&](size_t count) {
    for (size_t i = 0; i < count; ++i) {
      if (transient[i]) grants_.Unmap(mappings[i]);
    }
  };
  uint64_t bytes = 0;
  for (size_t i = 0; i < request.segments.size(); ++i) {
    bool is_transient = false;
    if (!MapSegment(request.segments[i].gref, device_writes, &mappings[i], &is_transient)) {
      release(i);  // all or nothing
      return blkif::kStatusError;
    }
    transient[i] = is_transient;
    bytes += uint64_t{request.segments[i].sectors()} * block::kSectorSize;
  }
  bounce_.resize(bytes);
  bool ok = true;
  const uint64_t offset = request.sector * block::kSectorSize;
  if (device_writes) {
    ok = image_.Read(offset, bounce_).ok();
    for (size_t i = 0, at = 0; ok && i < request.segments.size(); ++i) {
      const size_t length = request.segments[i].sectors() * block::kSectorSize;
      const uint64_t gpa = (mappings[i].gfn << 12) + request.segments[i].first_sector * block::kSectorSize;
      ok = memory_.Write(At(gpa), std::span<const uint8_t>(bounce_.data() + at, length)).ok();
      at += length;
    }
  } else {
    for (size_t i = 0, at = 0; ok && i < request.segments.size(); ++i) {
      const size_t length = request.segments[i].sectors() * block::kSectorSize;
      const uint64_t gpa = (mappings[i].gfn << 12) + request.segments[i].first_sector * block::kSectorSize;
      ok = memory_.Read(At(gpa), std::span<uint8_t>(bounce_.data() + at, length)).ok();
      at += length;
    }
    ok = ok && image_.Write(offset, bounce_).ok();
  }
  release(request.segments.size());
  if (!ok) return blkif::kStatusError;
  absl::MutexLock lock(&mutex_);
  (device_writes ? statistics_.bytes_read : statistics_.bytes_written) += bytes;
  return blkif::kStatusOkay;
}

}  // namespace xenkvm::xenbus
