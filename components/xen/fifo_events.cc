#include "components/xen/fifo_events.h"

#include <atomic>
#include <memory>

#include "components/xen/hypercall_caller.h"
#include "spdlog/spdlog.h"

namespace xenkvm::xen {
namespace {

constexpr uint32_t kPending = 1u << 31;
constexpr uint32_t kMasked = 1u << 30;
constexpr uint32_t kLinked = 1u << 29;
constexpr uint32_t kBusy = 1u << 28;
constexpr uint32_t kLinkMask = (1u << kFifoLinkBits) - 1;
constexpr uint32_t kControlBlockSize = 8 + 4 * kFifoPriorities;  // ready, _rsvd, head[16]
constexpr uint32_t kHeadOffset = 8;
constexpr uint32_t kPageSize = 4096;

std::atomic_ref<uint32_t> Atomic(uint32_t* word) { return std::atomic_ref<uint32_t>(*word); }

}  // namespace

FifoEvents::FifoEvents(memory::GuestMemory& memory, accel::Accelerator& accelerator, uint32_t vcpus, uint32_t max_ports)
    : memory_(memory), accelerator_(accelerator), max_ports_(max_ports), vcpus_(vcpus) {}

int64_t FifoEvents::InitControl(uint32_t vcpu, uint64_t gfn, uint32_t offset, const std::vector<uint32_t>& pending_ports) {
  if (offset % 8 != 0 || offset > kPageSize - kControlBlockSize) return XenError(XEN_EINVAL);
  if (vcpu >= vcpus_.size()) return XenError(XEN_ENOENT);
  if (vcpus_[vcpu].control_block != nullptr) return XenError(XEN_EINVAL);  // once per vCPU
  if (gfn > (~uint64_t{0} >> 12)) return XenError(XEN_EINVAL);
  absl::StatusOr<uint8_t*> page = memory_.HostAddress(memory::GuestAddress(gfn << 12), kPageSize);
  if (!page.ok()) return XenError(XEN_EINVAL);
  vcpus_[vcpu] = VcpuQueues{*page + offset, {}};
  if (!active_) {
    active_ = true;
    ports_.assign(max_ports_, PortState{});
    for (uint32_t port : pending_ports) {
      if (port < max_ports_) ports_[port].pending_without_word = true;
    }
  }
  return 0;
}

int64_t FifoEvents::ExpandArray(uint64_t gfn, std::vector<uint32_t>* reraise) {
  if (!active_) return XenError(XEN_EOPNOTSUPP);
  const uint64_t base = uint64_t{pages_.size()} * kFifoWordsPerPage;
  if (base >= max_ports_) return XenError(XEN_ENOSPC);
  if (gfn > (~uint64_t{0} >> 12)) return XenError(XEN_EINVAL);
  absl::StatusOr<uint8_t*> page = memory_.HostAddress(memory::GuestAddress(gfn << 12), kPageSize);
  if (!page.ok()) return XenError(XEN_EINVAL);
  pages_.push_back(reinterpret_cast<uint32_t*>(*page));
  // Events raised while this page was missing are raised again now, as Xen does.
  for (uint64_t port = base; port < base + kFifoWordsPerPage && port < max_ports_; ++port) {
    if (!ports_[port].pending_without_word) continue;
    ports_[port].pending_without_word = false;
    reraise->push_back(static_cast<uint32_t>(port));
  }
  return 0;
}

void FifoEvents::Reset() {
  active_ = false;
  for (VcpuQueues& queues : vcpus_) queues = VcpuQueues{};
  pages_.clear();
  ports_.clear();
}

void FifoEvents::InitPort(uint32_t port) {
  if (active_ && port < ports_.size()) ports_[port] = PortState{};
}

int64_t FifoEvents::SetPriority(uint32_t port, uint32_t priority) {
  if (!active_) return XenError(XEN_ENOSYS);  // 2-level has no priorities
  if (priority >= kFifoPriorities || port >= ports_.size()) return XenError(XEN_EINVAL);
  ports_[port].priority = static_cast<uint8_t>(priority);
  return 0;
}

uint32_t* FifoEvents::Word(uint32_t port) const {
  if (port >= max_ports_ || port / kFifoWordsPerPage >= pages_.size()) return nullptr;
  return pages_[port / kFifoWordsPerPage] + port % kFifoWordsPerPage;
}

void FifoEvents::ClearPending(uint32_t port) {
  if (!active_ || port >= ports_.size()) return;
  ports_[port].pending_without_word = false;
  if (uint32_t* word = Word(port)) {
    const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
    Atomic(word).fetch_and(~kPending);
  }
}

bool FifoEvents::IsPending(uint32_t port) const {
  if (port >= ports_.size()) return false;
  const uint32_t* word = Word(port);
  return word != nullptr ? (Atomic(const_cast<uint32_t*>(word)).load() & kPending) != 0 : ports_[port].pending_without_word;
}

bool FifoEvents::IsMasked(uint32_t port) const {
  const uint32_t* word = Word(port);
  return word == nullptr || (Atomic(const_cast<uint32_t*>(word)).load() & kMasked) != 0;  // no word: masked, as Xen
}

bool FifoEvents::IsBusy(uint32_t port) const {
  const uint32_t* word = Word(port);
  return word != nullptr && (Atomic(const_cast<uint32_t*>(word)).load() & kLinked) != 0;
}

FifoEvents::Raised FifoEvents::Raise(uint32_t port, uint32_t vcpu) {
  Raised raised;
  if (!active_ || port >= ports_.size()) return raised;
  uint32_t* word = Word(port);
  if (word == nullptr) {
    raised.newly_pending = !ports_[port].pending_without_word;
    ports_[port].pending_without_word = true;
    return raised;
  }
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  raised.newly_pending = (Atomic(word).fetch_or(kPending) & kPending) == 0;
  const Raised linked = Link(port, vcpu, word);
  raised.masked = raised.newly_pending && linked.masked;
  raised.ready = linked.ready;
  return raised;
}

FifoEvents::Raised FifoEvents::Unmask(uint32_t port, uint32_t vcpu) {
  uint32_t* word = active_ ? Word(port) : nullptr;
  if (word == nullptr) return {};
  const std::unique_ptr<accel::GuestAtomicsExclusion> exclusion = accelerator_.ExcludeGuestAtomics();
  Atomic(word).fetch_and(~kMasked);
  if ((Atomic(word).load() & kPending) == 0) return {};
  Raised raised = Link(port, vcpu, word);
  raised.masked = false;
  return raised;
}

// Links a pending `port` at the tail of `vcpu`'s queue for its priority, unless it is masked,
// linked already, or the vCPU has no control block (the guest must not unmask before it sets one
// up: the event stays pending, as Xen drops it).
FifoEvents::Raised FifoEvents::Link(uint32_t port, uint32_t vcpu, uint32_t* word) {
  Raised raised;
  const uint32_t now = Atomic(word).load();
  if (now & kMasked) {
    raised.masked = true;
    return raised;
  }
  if ((now & kLinked) || vcpu >= vcpus_.size() || vcpus_[vcpu].control_block == nullptr) return raised;
  if (Atomic(word).fetch_or(kLinked) & kLinked) return raised;
  PortState& state = ports_[port];
  const uint8_t priority = state.priority;
  // Moved to another queue: if it was the old queue's tail, that queue is now empty.
  if (state.last_queue && *state.last_queue != std::make_pair(vcpu, priority)) {
    Queue& old = vcpus_[state.last_queue->first].queues[state.last_queue->second];
    if (old.tail == port) old.tail = 0;
  }
  state.last_queue = std::make_pair(vcpu, priority);
  VcpuQueues& queues = vcpus_[vcpu];
  Queue& queue = queues.queues[priority];
  bool linked = false;
  if (queue.tail != 0 && queue.tail != port) {
    if (uint32_t* tail = Word(queue.tail)) linked = SetLink(tail, port);
  }
  uint8_t* block = queues.control_block;
  if (!linked) Atomic(reinterpret_cast<uint32_t*>(block + kHeadOffset + 4 * priority)).store(port);
  queue.tail = port;
  if (!linked) {
    const uint32_t bit = 1u << priority;
    raised.ready = (Atomic(reinterpret_cast<uint32_t*>(block)).fetch_or(bit) & bit) == 0;
  }
  return raised;
}

// The guest may only set or clear MASKED, clear PENDING, or clear LINKED (with LINK) on a linked
// word; BUSY holds off its unmask, so the exchange fails at most a few times.
bool FifoEvents::SetLink(uint32_t* tail, uint32_t port) {
  std::atomic_ref<uint32_t> word = Atomic(tail);
  uint32_t seen = word.load();
  for (int attempt = 0; attempt < 6; ++attempt) {
    if ((seen & kLinked) == 0) {
      if (attempt > 0) word.fetch_and(~kBusy);
      return false;  // consumed meanwhile: the queue is empty
    }
    if (word.compare_exchange_strong(seen, (seen & ~(kBusy | kLinkMask)) | port)) return true;
    if (attempt == 0) {
      word.fetch_or(kBusy);
      seen = word.load();
    }
  }
  spdlog::warn("Xen shim: FIFO event {} not linked: the guest kept rewriting its queue's tail", port);
  word.fetch_and(~kBusy);
  return true;
}

}  // namespace xenkvm::xen
