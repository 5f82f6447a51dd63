#include "components/xenbus/disk_ring.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xenbus {
namespace {

constexpr uint64_t kRequestProducer = 0, kRequestEvent = 4, kResponseProducer = 8, kResponseEvent = 12;
constexpr uint64_t kPage = 4096;

}  // namespace

void DiskRingStatistics::Add(const DiskRingStatistics& other) {
  requests += other.requests;
  errors += other.errors;
  unsupported += other.unsupported;
  bytes_read += other.bytes_read;
  bytes_written += other.bytes_written;
  flushes += other.flushes;
  discards += other.discards;
  persistent_grants += other.persistent_grants;
  notifications += other.notifications;
  for (size_t i = 0; i < latency_counts.size(); ++i) latency_counts[i] += other.latency_counts[i];
  latency_seconds_sum += other.latency_seconds_sum;
  broken = broken || other.broken;
}

absl::StatusOr<std::unique_ptr<DiskRing>> DiskRing::Start(xen::GrantTable& grants, block::Image& image,
                                                          Options options, std::function<void()> notify) {
  const size_t pages = options.ring_grefs.size();
  if (pages == 0 || (pages & (pages - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("xen-disk: a ring of ", pages, " pages (1, 2, 4, ... allowed)"));
  }
  auto ring = std::unique_ptr<DiskRing>(new DiskRing(grants, image, options, std::move(notify)));
  for (uint32_t gref : ring->options_.ring_grefs) {
    xen::GrantTable::Mapping mapping;
    if (int16_t status = grants.Map(gref, /*readonly=*/false, &mapping); status != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("xen-disk: the frontend's ring-ref ", gref, " cannot be mapped (GNTST ", status, ")"));
    }
    ring->ring_.push_back(mapping);
  }
  absl::StatusOr<std::unique_ptr<block::IoEngine>> engine =
      block::NewIoEngine(image.fd(), ring->slots_, ring->options_.engine);
  if (!engine.ok()) return absl::Status(engine.status().code(), absl::StrCat("xen-disk: ", engine.status().message()));
  ring->engine_ = std::move(*engine);
  ring->kick_ = base::Fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ring->kick_.valid()) return absl::InternalError(absl::StrCat("xen-disk: eventfd: ", std::strerror(errno)));
  // Both ends start where the responses are: requests after them are still to be answered.
  ring->response_producer_ = ring->Index(kResponseProducer).load(std::memory_order_acquire);
  ring->request_consumer_ = ring->published_ = ring->response_producer_;
  ring->thread_ = std::thread([raw = ring.get()] { raw->Run(); });
  return ring;
}

DiskRing::DiskRing(xen::GrantTable& grants, block::Image& image, Options options, std::function<void()> notify)
    : grants_(grants),
      image_(image),
      options_(std::move(options)),
      limits_{image.sectors(), image.read_only(), options_.discard && image.supports_discard(),
              options_.max_indirect_segments},
      slots_(blkif::RingSlots(options_.abi, static_cast<uint32_t>(options_.ring_grefs.size()))),
      max_persistent_grants_(
          options_.max_persistent_grants != 0
              ? options_.max_persistent_grants
              : slots_ * (std::max(blkif::kMaxSegments, options_.max_indirect_segments) +
                          (options_.max_indirect_segments + blkif::kSegmentsPerIndirectPage - 1) /
                              blkif::kSegmentsPerIndirectPage)),
      order_(options_.accelerator),
      notify_(std::move(notify)),
      in_flight_(slots_) {
  for (uint32_t i = slots_; i > 0; --i) free_slots_.push_back(i - 1);
}

DiskRing::~DiskRing() {
  if (thread_.joinable()) {
    stopping_.store(true);
    WakeThread();
    thread_.join();
  }
  engine_.reset();  // nothing in flight: the thread waited for it
  for (InFlight& slot : in_flight_) {
    for (xen::GrantTable::Mapping& mapping : slot.transient) grants_.Unmap(mapping);
  }
  for (const xen::GrantTable::Mapping& mapping : persistent_.mappings()) grants_.Unmap(mapping);
  for (xen::GrantTable::Mapping& mapping : ring_) grants_.Unmap(mapping);
}

void DiskRing::Kick() {
  // Awake, the ring's thread holds serving_: a kick that finds it held writes the eventfd, which
  // the thread polls before it sleeps. Asleep, it has let serving_ go, and the ring is served
  // here if the thread saw the frontend waiting for each response (frontend_waits_); one that
  // goes on meanwhile is faster with the thread working beside it.
  if (serving_.TryLock()) {
    bool served = false;
    if (frontend_waits_ && !stopping_.load() && !broken_) {
      served = ServeSmallReads();
      if (!served) {
        handed_over_ = true;
        frontend_waits_ = false;  // until the thread has looked afresh
        waits_seen_ = {};
      }
    }
    serving_.Unlock();
    if (served) return;
  }
  WakeThread();
}

void DiskRing::WakeThread() {
  const uint64_t one = 1;
  if (kick_.valid()) (void)!write(kick_.get(), &one, sizeof(one));
}

bool DiskRing::ServeSmallReads() {
  // Now and then the thread looks again whether the frontend keeps several requests in flight
  // (Run: then it stays awake while they come, sharing the work with the frontend).
  if (++inline_kicks_ % kProbeKicks == 0) return false;
  // Several at once: the thread serves them, while the frontend goes on.
  if (Index(kRequestProducer).load(std::memory_order_acquire) - request_consumer_ > kInlineRequests) return false;
  uint32_t budget = kInlineRequests;
  while (true) {
    now_ = absl::Now();
    const Taken taken = TakeRequests(&budget);
    if (taken == Taken::kBroken) {
      MarkBroken();
      return true;  // nothing more to take; what is in flight wakes the thread
    }
    AnswerCompletions();
    if (taken == Taken::kLeftForThread) return false;
    // As the thread does before it sleeps, so that the next request kicks again.
    if (!ArmRequestEvent()) return true;
  }
}

DiskRingStatistics DiskRing::Statistics() const {
  absl::MutexLock lock(&mutex_);
  return statistics_;
}

std::atomic_ref<uint32_t> DiskRing::Index(uint64_t offset) const {
  // The indexes live in the first page's header, 4-byte aligned.
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(ring_[0].page.data() + offset));
}

template <typename Copy>
void DiskRing::ForRingBytes(uint64_t offset, size_t length, const Copy& copy) const {
  for (size_t done = 0; done < length;) {
    const uint64_t at = offset + done;
    const size_t piece = std::min<size_t>(length - done, kPage - at % kPage);
    copy(ring_[(at / kPage) % ring_.size()].page.data() + at % kPage, done, piece);
    done += piece;
  }
}

void DiskRing::CopyFromRing(uint64_t offset, std::span<uint8_t> out) const {
  ForRingBytes(offset, out.size(), [&](uint8_t* ring, size_t done, size_t piece) { std::memcpy(out.data() + done, ring, piece); });
}

void DiskRing::CopyToRing(uint64_t offset, std::span<const uint8_t> in) const {
  ForRingBytes(offset, in.size(), [&](uint8_t* ring, size_t done, size_t piece) { std::memcpy(ring, in.data() + done, piece); });
}

void DiskRing::MarkBroken() {
  spdlog::warn("xen-disk {}: the frontend broke its ring (a request index out of range); it is no longer served",
               image_.path());
  broken_ = true;
  absl::MutexLock lock(&mutex_);
  statistics_.broken = true;
}

bool DiskRing::ArmRequestEvent() {
  Index(kRequestEvent).store(request_consumer_ + 1, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return order_.Confirm([this] { return RequestsWaiting(); });
}

void DiskRing::Run() {
  pollfd waits[2] = {{kick_.get(), POLLIN, 0}, {engine_->completion_fd(), POLLIN, 0}};
  absl::MutexLock serving(&serving_);
  while (true) {
    const bool stopping = stopping_.load();
    if (stopping && engine_->in_flight() == 0) return;
    now_ = absl::Now();
    if (!stopping && !broken_ && TakeRequests(/*inline_budget=*/nullptr) == Taken::kBroken) MarkBroken();
    // After taking: what the engine finished within its submission is answered in this pass.
    if (AnswerCompletions()) continue;
    const auto waiting_since = std::chrono::steady_clock::now();
    // A frontend with one request at a time is served faster by its own kicks (Kick) than by
    // this thread's polling: only completions are polled for then.
    if ((!frontend_waits_ || engine_->in_flight() > 0) && PollBriefly()) continue;
    handed_over_ = false;
    // About to sleep: ask for an event at the next request, then look once more (the frontend may
    // have just added one). While this thread polls, the frontend is spared its notifications.
    if (!stopping_.load() && !broken_ && ArmRequestEvent()) continue;
    if (engine_->HasCompletions()) continue;
    // Asleep, the ring is the kickers' to serve (Kick); a kick that finds it held wakes this.
    const uint32_t inline_kicks_before = inline_kicks_;
    serving_.Unlock();
    const int polled = poll(waits, 2, -1);
    const int poll_error = polled < 0 ? errno : 0;
    serving_.Lock();
    if (poll_error != 0 && poll_error != EINTR) {
      spdlog::error("xen-disk {}: poll: {}; the ring stops", image_.path(), std::strerror(poll_error));
      stopping_.store(true);
    }
    uint64_t ignored = 0;
    for (const pollfd& wait : waits) {
      if (wait.revents != 0) (void)!read(wait.fd, &ignored, sizeof(ignored));  // drained before reaping
    }
    // A sleep while kickers served the ring says nothing of how soon its work comes.
    if (inline_kicks_ == inline_kicks_before) poll_window_.Update(std::chrono::steady_clock::now() - waiting_since);
  }
}

bool DiskRing::AnswerCompletions() {
  completions_.clear();
  if (engine_->Reap(&completions_) > 0) {
    now_ = absl::Now();
    for (const block::IoCompletion& completion : completions_) Complete(completion);
  }
  PublishStatistics();
  if (!broken_) PublishResponses();
  return !completions_.empty();
}

bool DiskRing::RequestsWaiting() const {
  return Index(kRequestProducer).load(std::memory_order_acquire) != request_consumer_ &&
         request_consumer_ - response_producer_ < slots_ && !free_slots_.empty();
}

bool DiskRing::PollBriefly() const {
  // As QEMU's adaptive polling: the next request or completion often follows within
  // microseconds, sooner than a sleeping thread wakes; how long to look adapts (poll_window_).
  // Stopping, the thread only waits for the requests in flight: asleep, however long they take.
  // Handed the ring by a kicker, the thread has not been asleep for lack of work: it polls
  // long enough to see whether the frontend keeps it busy.
  const std::chrono::nanoseconds window = handed_over_ ? base::PollWindow::kMax : poll_window_.window();
  if (window.count() == 0 || stopping_.load(std::memory_order_relaxed)) return false;
  return base::SpinFor(window, [this] {
    return stopping_.load(std::memory_order_relaxed) || engine_->HasCompletions() || (!broken_ && RequestsWaiting());
  });
}

DiskRing::Taken DiskRing::TakeRequests(uint32_t* inline_budget) {
  const size_t slot_size = blkif::RequestSize(options_.abi);
  std::span<uint8_t> slot(request_slot_.data(), slot_size);
  const uint32_t producer = Index(kRequestProducer).load(std::memory_order_acquire);
  if (producer - request_consumer_ > slots_) return Taken::kBroken;
  if (inline_budget == nullptr && producer != request_consumer_) ObserveFrontend(producer);
  bool took = false;
  uint64_t unsubmitted_bytes = 0;
  Taken taken = Taken::kAll;
  // Requests only while their responses have room (RING_REQUEST_CONS_OVERFLOW): the rest wait for
  // completions, which wake this thread.
  while (request_consumer_ != producer && request_consumer_ - response_producer_ < slots_ && !free_slots_.empty()) {
    CopyFromRing(blkif::kRingHeaderSize + (request_consumer_ % slots_) * slot_size, slot);  // copied once
    blkif::Decoded decoded = blkif::DecodeRequest(options_.abi, slot, limits_);
    if (inline_budget != nullptr && (*inline_budget == 0 || (decoded.status == blkif::kStatusOkay &&
                                                              decoded.request.operation != blkif::kOpRead))) {
      taken = Taken::kLeftForThread;  // taken afresh (copied and checked again) by the thread
      break;
    }
    ++request_consumer_;
    took = true;
    if (inline_budget != nullptr) --*inline_budget;
    if (decoded.request.operation != blkif::kOpRead) waits_seen_.other_requests = true;
    if (decoded.status != blkif::kStatusOkay) {
      Respond(decoded.request.id, decoded.request.data_operation, decoded.status, now_, 0, false);
      continue;
    }
    unsubmitted_bytes += Begin(decoded.request, now_);
    if (unsubmitted_bytes >= kEarlySubmitBytes) {  // large transfers: one by one
      Submit();
      unsubmitted_bytes = 0;
      took = false;
      AnswerCompletions();
    }
  }
  if (took) Submit();
  return taken;
}

void DiskRing::ObserveFrontend(uint32_t producer) {
  // A frontend waiting for each response has no other request unanswered, and has taken every
  // response with an event asked for the next (rsp_event, set by a frontend about to wait; one
  // that looks first finds a quick response without setting it, hence a share, not all).
  WaitsSeen& seen = waits_seen_;
  ++seen.takes;
  seen.several_out = seen.several_out || producer - response_producer_ > 1;
  seen.event_asked += Index(kResponseEvent).load(std::memory_order_relaxed) == published_ + 1;
  if (seen.takes < kWaitsWindow) return;
  frontend_waits_ = engine_->ReadsCachedDataInline() && !seen.several_out && !seen.other_requests &&
                    seen.event_asked >= kWaitsWindow * 3 / 4;
  seen = {};
}

void DiskRing::Submit() {
  if (absl::Status submitted = engine_->Submit(); !submitted.ok()) {
    spdlog::error("xen-disk {}: {}", image_.path(), std::string(submitted.message()));
  }
}

uint64_t DiskRing::Begin(blkif::Request& request, absl::Time taken) {
  block::IoRequest io;
  InFlight slot{request.id, request.data_operation, taken, 0, {}};
  int16_t status = blkif::kStatusOkay;
  switch (request.operation) {
    case blkif::kOpFlush:
      if (!options_.flush) status = blkif::kStatusNotSupported;
      io.operation = block::IoOperation::kFlush;
      break;
    case blkif::kOpDiscard:
      io.operation = block::IoOperation::kDiscard;
      io.offset = request.sector * block::kSectorSize;
      io.length = request.discard_sectors * block::kSectorSize;
      break;
    case blkif::kOpIndirect:
      status = ReadIndirectSegments(request);
      if (status == blkif::kStatusOkay) status = PrepareTransfer(request, slot, io);
      break;
    default:  // READ, WRITE
      status = PrepareTransfer(request, slot, io);
      break;
  }
  if (status != blkif::kStatusOkay) {
    Respond(request.id, request.data_operation, status, taken, 0, false);
    return 0;
  }
  const uint32_t index = free_slots_.back();
  io.tag = index;
  if (absl::Status queued = engine_->Enqueue(std::move(io)); !queued.ok()) {
    for (xen::GrantTable::Mapping& mapping : slot.transient) grants_.Unmap(mapping);
    Respond(request.id, request.data_operation, blkif::kStatusError, taken, 0, false);
    return 0;
  }
  free_slots_.pop_back();
  const uint64_t bytes = slot.bytes;
  in_flight_[index] = std::move(slot);
  return bytes;
}

int16_t DiskRing::ReadIndirectSegments(blkif::Request& request) {
  // The segment pages, copied once (the guest may change them meanwhile). Kept mapped as
  // persistent grants where the frontend's are (as blkback keeps them); read-only and released
  // otherwise.
  indirect_pages_.resize(request.indirect_grefs.size() * kPage);
  for (size_t i = 0; i < request.indirect_grefs.size(); ++i) {
    xen::GrantTable::Mapping mapping;
    bool transient = false;
    if (!MapSegment(request.indirect_grefs[i], /*device_writes=*/false, &mapping, &transient)) {
      return blkif::kStatusError;
    }
    std::memcpy(indirect_pages_.data() + i * kPage, mapping.page.data(), kPage);
    if (transient) grants_.Unmap(mapping);
  }
  return blkif::DecodeIndirectSegments(indirect_pages_, limits_, request);
}

bool DiskRing::MapSegment(uint32_t gref, bool device_writes, xen::GrantTable::Mapping* mapping, bool* transient) {
  if (options_.persistent_grants) {
    if (const xen::GrantTable::Mapping* kept = persistent_.Find(gref); kept != nullptr) {
      *mapping = *kept;
      *transient = false;
      return true;
    }
    // Persistent grants are granted writable; keep it if there is room.
    if (persistent_.size() < max_persistent_grants_ && grants_.Map(gref, /*readonly=*/false, mapping) == 0) {
      persistent_.Add(*mapping);
      *transient = false;
      statistics_changed_ = true;
      return true;
    }
  }
  *transient = true;
  return grants_.Map(gref, /*readonly=*/!device_writes, mapping) == 0;
}

int16_t DiskRing::PrepareTransfer(const blkif::Request& request, InFlight& slot, block::IoRequest& io) {
  const bool device_writes = request.data_operation == blkif::kOpRead;  // into the guest's pages
  io.operation = device_writes ? block::IoOperation::kRead : block::IoOperation::kWrite;
  io.offset = request.sector * block::kSectorSize;
  for (const blkif::Segment& segment : request.segments) {
    xen::GrantTable::Mapping mapping;
    bool transient = false;
    if (!MapSegment(segment.gref, device_writes, &mapping, &transient)) {
      for (xen::GrantTable::Mapping& mapped : slot.transient) grants_.Unmap(mapped);  // all or nothing
      slot.transient.clear();
      return blkif::kStatusError;
    }
    if (transient) slot.transient.push_back(mapping);
    // Straight into or out of the granted page (decoded: first <= last < 8, within the page).
    uint8_t* base = mapping.page.data() + segment.first_sector * block::kSectorSize;
    const size_t length = segment.sectors() * block::kSectorSize;
    if (!io.buffers.empty() && static_cast<uint8_t*>(io.buffers.back().iov_base) + io.buffers.back().iov_len == base) {
      io.buffers.back().iov_len += length;  // contiguous with the previous piece
    } else {
      io.buffers.push_back({base, length});
    }
    slot.bytes += length;
  }
  return blkif::kStatusOkay;
}

void DiskRing::Complete(const block::IoCompletion& completion) {
  if (completion.tag >= in_flight_.size()) return;
  InFlight& slot = in_flight_[completion.tag];
  for (xen::GrantTable::Mapping& mapping : slot.transient) grants_.Unmap(mapping);
  slot.transient.clear();
  free_slots_.push_back(static_cast<uint32_t>(completion.tag));
  if (completion.error != 0) {
    spdlog::debug("xen-disk {}: request {} failed: {}", image_.path(), slot.id, std::strerror(completion.error));
  }
  Respond(slot.id, slot.operation, completion.error == 0 ? blkif::kStatusOkay : blkif::kStatusError, slot.taken,
          completion.error == 0 ? slot.bytes : 0, slot.operation == blkif::kOpRead);
}

void DiskRing::Respond(uint64_t id, uint8_t operation, int16_t status, absl::Time taken, uint64_t bytes, bool read) {
  const double seconds = absl::ToDoubleSeconds(now_ - taken);
  DiskRingStatistics& counts = unpublished_;
  ++counts.requests;
  if (status == blkif::kStatusError) ++counts.errors;
  if (status == blkif::kStatusNotSupported) ++counts.unsupported;
  if (status == blkif::kStatusOkay && operation == blkif::kOpFlush) ++counts.flushes;
  if (status == blkif::kStatusOkay && operation == blkif::kOpDiscard) ++counts.discards;
  (read ? counts.bytes_read : counts.bytes_written) += bytes;
  const size_t bucket = static_cast<size_t>(std::lower_bound(kLatencyBounds.begin(), kLatencyBounds.end(), seconds) -
                                            kLatencyBounds.begin());
  ++counts.latency_counts[bucket];
  counts.latency_seconds_sum += seconds;
  statistics_changed_ = true;
  if (broken_) return;  // nothing more is written into a ring the frontend broke
  const blkif::ResponseSlot response = blkif::EncodeResponse(options_.abi, id, operation, status);
  CopyToRing(blkif::kRingHeaderSize + (response_producer_ % slots_) * blkif::RequestSize(options_.abi), response.span());
  ++response_producer_;
}

void DiskRing::PublishStatistics() {
  if (!statistics_changed_) return;
  statistics_changed_ = false;
  absl::MutexLock lock(&mutex_);
  statistics_.Add(unpublished_);
  statistics_.persistent_grants = persistent_.size();
  unpublished_ = {};
}

void DiskRing::PublishResponses() {
  if (response_producer_ == published_) return;
  const uint32_t before = published_;
  published_ = response_producer_;
  Index(kResponseProducer).store(response_producer_, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (order_.Confirm([&] {
        const uint32_t event = Index(kResponseEvent).load(std::memory_order_acquire);
        return response_producer_ - event < response_producer_ - before;
      })) {
    notify_();
    absl::MutexLock lock(&mutex_);
    ++statistics_.notifications;
  }
}

}  // namespace xenkvm::xenbus
