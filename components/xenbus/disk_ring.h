// The data path of one xen-disk queue: a blkif ring the frontend granted (one page or several),
// served on an I/O thread of its own with many requests in flight. Each request is copied out of
// its slot once, decoded and checked (blkif.h), its segments are mapped through the grant table
// (all or none: one bad grant fails the request and releases the others, XSA-361/362/365), and
// the I/O goes straight between the image and the granted pages (block::IoEngine: io_uring, or a
// thread pool where io_uring is unavailable). Responses go back as requests complete, in any
// order, with zeroed padding; the frontend is notified once per batch, as rsp_event asks (large
// transfers are submitted and answered one by one: see kEarlySubmitBytes). A flush waits for the
// writes before it. A producer index more than the ring ahead stops the ring (the frontend broke
// the protocol) without touching anything more.
//
// Who serves the ring: its thread, which polls while work comes and sleeps when it stops, and,
// for a frontend that waits for each response (the thread judges it: ObserveFrontend), the
// thread that kicks it while it sleeps: the guest's vCPU, in the exit of its EVTCHNOP_send, with
// a few small reads from the page cache (kInlineRequests plain READs; anything else wakes the
// thread). A cached 4 KiB read is a ~1.3 us system call, and handing it to another thread and the
// response back cost about as much again: 4 KiB random reads at depth 1 went from 0.72-0.75x
// fio to 0.96-1.02x, and through a guest on emu from ~230 k to ~530 k IOPS. A frontend that goes
// on while its requests are served (several in flight, or responses it has not taken yet) keeps
// the thread working beside it instead, as serving inline would serialize the two.
//
// With persistent grants the frontend reuses the same granted pages; their mappings are kept
// (up to a bound) until the ring is torn down, saving the pin/unpin per request.
#ifndef XENKVM_COMPONENTS_XENBUS_DISK_RING_H_
#define XENKVM_COMPONENTS_XENBUS_DISK_RING_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "components/base/fd.h"
#include "components/base/spin_wait.h"
#include "components/block/image.h"
#include "components/block/io_engine.h"
#include "components/xen/grant_table.h"
#include "components/xenbus/blkif.h"
#include "components/xenbus/guest_order.h"
#include "components/xenbus/persistent_grants.h"

namespace xenkvm::xenbus {

// Upper bounds (seconds) of the request-latency histogram's buckets; one more bucket counts the rest.
inline constexpr std::array<double, 13> kLatencyBounds = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3,  2.5e-3, 5e-3,
                                                          10e-3, 25e-3,  50e-3,  100e-3, 250e-3, 1.0};

struct DiskRingStatistics {
  uint64_t requests = 0;
  uint64_t errors = 0;           // answered BLKIF_RSP_ERROR
  uint64_t unsupported = 0;      // answered BLKIF_RSP_EOPNOTSUPP
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t flushes = 0;
  uint64_t discards = 0;
  uint64_t persistent_grants = 0;  // mappings kept now
  uint64_t notifications = 0;      // events raised to the frontend
  // Service time of each request (taken off the ring to its response written), by bucket of
  // kLatencyBounds (the last: beyond 1 s), and their sum.
  std::array<uint64_t, kLatencyBounds.size() + 1> latency_counts{};
  double latency_seconds_sum = 0;
  bool broken = false;             // the frontend broke the ring; no more requests are taken

  // Adds another queue's.
  void Add(const DiskRingStatistics& other);
};

class DiskRing {
 public:
  // Requests taken are submitted to the engine together up to this many bytes of transfer; then
  // submitted, and what completed answered, before more are taken. The engine does a page-cache
  // transfer within its submission, so a batch of large ones would hold every response back
  // until the last copy while the frontend idles.
  static constexpr uint64_t kEarlySubmitBytes = 256 * 1024;
  // Served on a kicking thread at one kick at most (Kick); more wake the ring's thread.
  static constexpr uint32_t kInlineRequests = 4;
  // Once in so many kicks served inline, the thread is woken instead, to see whether the
  // frontend now keeps several requests in flight.
  static constexpr uint32_t kProbeKicks = 4096;
  // The thread judges how the frontend waits over this many requests it takes (ObserveFrontend);
  // kicks are served inline only while it judges the frontend waiting for each response.
  static constexpr uint32_t kWaitsWindow = 64;

  struct Options {
    blkif::Abi abi = blkif::Abi::k64;
    std::vector<uint32_t> ring_grefs;  // the ring's pages, in order (1, 2, 4, ... of them)
    bool persistent_grants = false;
    uint32_t max_indirect_segments = 0;
    bool flush = true;    // offered: FLUSH_DISKCACHE requests are served, else EOPNOTSUPP
    bool discard = true;  // offered (and the image can)
    // 0: every page the frontend can have in flight (slots x the segments and indirect pages of
    // a request), which a persistent-grant frontend reuses; Linux's
    // blkback keeps 1056 and remaps the rest per request, which here costs a grant check and pin
    // per segment while a kept one is a lookup.
    uint32_t max_persistent_grants = 0;
    block::EngineChoice engine = block::EngineChoice::kAuto;
    // The guest's vCPUs (guest_order.h); null where no vCPU runs the frontend (tests).
    accel::Accelerator* accelerator = nullptr;
  };

  // Maps the ring's grants (writable) and starts the I/O thread. `notify` raises the frontend's
  // event channel (from the I/O thread). The image and grant table must outlive it.
  static absl::StatusOr<std::unique_ptr<DiskRing>> Start(xen::GrantTable& grants, block::Image& image,
                                                         Options options, std::function<void()> notify);
  // Stops taking requests, waits for those in flight, then releases every mapping (the ring's too).
  ~DiskRing();

  // The frontend's event: look at the ring. Any thread; while the ring's thread sleeps and judges
  // the frontend waiting for each response, up to kInlineRequests small reads (plain READs: at
  // most 11 pages each) with the page cache are served right here and their responses published
  // (`notify` may then run on this thread). The owner must stop kicking (unbind the event
  // channel) before it destroys the ring.
  void Kick();

  DiskRingStatistics Statistics() const;
  uint32_t slots() const { return slots_; }
  std::string_view engine_name() const { return engine_->name(); }

 private:
  // A request between its submission and its response.
  struct InFlight {
    uint64_t id = 0;
    uint8_t operation = 0;  // what the response carries
    absl::Time taken;
    uint64_t bytes = 0;
    std::vector<xen::GrantTable::Mapping> transient;  // released when it completes
  };

  // What TakeRequests did.
  enum class Taken { kAll, kLeftForThread, kBroken };

  DiskRing(xen::GrantTable& grants, block::Image& image, Options options, std::function<void()> notify);
  void Run();
  // Wakes the ring's thread (an eventfd write).
  void WakeThread();
  // Kick's work on the caller's thread, with `serving_` held: false when the ring's thread must
  // look (a request that is not a small read, more than kInlineRequests, or a probe: kProbeKicks).
  bool ServeSmallReads();
  // Takes requests while the ring has some and room for their responses. With `inline_budget`
  // (a kicker's), only small reads while the budget (requests, decremented) lasts: it stops at
  // another request (kLeftForThread), leaving it in the ring.
  Taken TakeRequests(uint32_t* inline_budget);
  void MarkBroken();
  // The thread's look at the frontend at a pass that takes requests (frontend_waits_).
  void ObserveFrontend(uint32_t producer);
  // Before sleeping, or after serving on a kicker: asks for an event at the next request, then
  // looks once more; true if requests came meanwhile.
  bool ArmRequestEvent();
  // Requests in the ring that could be taken now.
  bool RequestsWaiting() const;
  // Spins up to poll_window_'s window for a request or a completion; true when one came.
  bool PollBriefly() const;
  // Submits what was enqueued.
  void Submit();
  // Answers what the engine completed, then publishes statistics and responses; true if any.
  bool AnswerCompletions();
  // Starts one decoded request (returns its bytes of transfer), or answers it at once (0).
  uint64_t Begin(blkif::Request& request, absl::Time taken);
  // Fills `slot` (mappings, iovecs) for a READ/WRITE; a status to answer with at once otherwise.
  int16_t PrepareTransfer(const blkif::Request& request, InFlight& slot, block::IoRequest& io);
  int16_t ReadIndirectSegments(blkif::Request& request);
  bool MapSegment(uint32_t gref, bool device_writes, xen::GrantTable::Mapping* mapping, bool* transient);
  void Complete(const block::IoCompletion& completion);
  void Respond(uint64_t id, uint8_t operation, int16_t status, absl::Time taken, uint64_t bytes, bool read);
  // Adds what was counted since the last time to Statistics(): once a pass, before the
  // responses it counted are published (a frontend that saw them sees them counted).
  void PublishStatistics();
  // Makes the responses written so far visible; notifies if the frontend asked (rsp_event).
  void PublishResponses();
  // The ring's bytes at `offset` from its start, across its pages.
  template <typename Copy>
  void ForRingBytes(uint64_t offset, size_t length, const Copy& copy) const;  // copy(ring bytes, done, piece)
  void CopyFromRing(uint64_t offset, std::span<uint8_t> out) const;
  void CopyToRing(uint64_t offset, std::span<const uint8_t> in) const;
  std::atomic_ref<uint32_t> Index(uint64_t offset) const;

  xen::GrantTable& grants_;
  block::Image& image_;
  const Options options_;
  const blkif::DiskLimits limits_;
  const uint32_t slots_;
  const uint32_t max_persistent_grants_;
  const GuestOrder order_;
  std::function<void()> notify_;
  std::vector<xen::GrantTable::Mapping> ring_;
  std::unique_ptr<block::IoEngine> engine_;
  base::Fd kick_;  // an eventfd

  // Held by whoever serves the ring: its thread, except while it sleeps, or a kicker meanwhile
  // (Kick). Everything below up to `stopping_` belongs to the holder; the engine too.
  absl::Mutex serving_;
  uint32_t inline_kicks_ = 0;
  // The thread was woken by a kicker that could not serve the ring (until it sleeps again): it
  // polls the longest window meanwhile, to see how the frontend goes on.
  bool handed_over_ = false;
  // What the thread saw of the frontend over the requests of the current window.
  struct WaitsSeen {
    uint32_t takes = 0;
    uint32_t event_asked = 0;  // rsp_event asked for the next response
    bool several_out = false;  // more than one request unanswered
    bool other_requests = false;  // any but small reads (which a kick cannot serve)
  };
  WaitsSeen waits_seen_;
  // The frontend waits for each response (judged over the last window), and the engine does
  // cached reads within Submit (not with cache=none, where the thread would be woken for each
  // completion anyway): the thread then polls only for completions, and sleeps, so that the
  // next request is served by its kick.
  bool frontend_waits_ = false;
  uint32_t request_consumer_ = 0;
  uint32_t response_producer_ = 0;
  uint32_t published_ = 0;
  bool broken_ = false;
  // How long the thread polls for more work before it sleeps: KVM's halt-polling rule, as the
  // frontend's vCPU waits. A rule that shrank the window whenever a poll missed (as this ring's
  // did) let it collapse for good once the frontend slept: each wait then cost both a wake-up.
  base::PollWindow poll_window_;
  absl::Time now_;  // read once a pass: when its requests were taken, or its completions reaped
  std::array<uint8_t, blkif::kMaxRequestSize> request_slot_{};  // the slot being decoded
  std::vector<uint8_t> indirect_pages_;  // the indirect pages of the request being decoded
  DiskRingStatistics unpublished_;  // counted since the last PublishStatistics
  bool statistics_changed_ = false;
  PersistentGrants persistent_;
  std::vector<InFlight> in_flight_;
  std::vector<uint32_t> free_slots_;
  std::vector<block::IoCompletion> completions_;

  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mutex_;
  DiskRingStatistics statistics_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace xenkvm::xenbus

#endif  // XENKVM_COMPONENTS_XENBUS_DISK_RING_H_
