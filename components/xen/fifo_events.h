// FIFO event channels (Xen's event_fifo.c ABI, what Linux uses when Xen offers it): each port has
// a 32-bit event word {PENDING, MASKED, LINKED, BUSY, 17-bit LINK} in guest pages the guest hands
// over with EVTCHNOP_expand_array (1024 words a page); each vCPU has a control block
// (EVTCHNOP_init_control) with a READY bit and a HEAD per priority (16 queues, 0 highest). Raising
// a port sets PENDING and, unless it is masked or already linked, links it at the tail of its
// vCPU's queue for its priority (the old tail's LINK, or HEAD when the queue was empty) and sets
// READY; a newly set READY bit sets the vCPU's upcall_pending. The guest consumes by clearing
// LINKED; the tail's link is set by compare-and-exchange while it is still LINKED, with BUSY held
// against the guest's unmask, as Xen does.
//
// Not thread-safe: EventChannels calls it under its lock. The guest rewrites its words at any
// moment: every access is an atomic on guest memory, under the accelerator's guest-atomics
// exclusion; no value read back is trusted beyond a port number checked against the limit.
#ifndef XENKVM_COMPONENTS_XEN_FIFO_EVENTS_H_
#define XENKVM_COMPONENTS_XEN_FIFO_EVENTS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "components/accel/accelerator.h"
#include "components/memory/guest_memory.h"

namespace xenkvm::xen {

inline constexpr uint32_t kFifoPriorities = 16;
inline constexpr uint32_t kFifoDefaultPriority = 7;
inline constexpr uint32_t kFifoWordsPerPage = 1024;
inline constexpr uint32_t kFifoLinkBits = 17;

class FifoEvents {
 public:
  // `max_ports`: the domain's limit (at most 131072).
  FifoEvents(memory::GuestMemory& memory, accel::Accelerator& accelerator, uint32_t vcpus, uint32_t max_ports);

  // Whether the domain uses the FIFO ABI (since its first init_control).
  bool active() const { return active_; }
  uint32_t max_ports() const { return max_ports_; }

  // EVTCHNOP_init_control for `vcpu` (< vcpus): its control block at `offset` in frame `gfn`.
  // -EINVAL for an offset that is not 8-aligned or leaves no room for the block, a frame that is
  // not guest memory, or a vCPU that has one already. The first one switches the domain to FIFO:
  // `pending_ports` (pending under 2-level) stay pending until their words exist.
  int64_t InitControl(uint32_t vcpu, uint64_t gfn, uint32_t offset, const std::vector<uint32_t>& pending_ports);
  // EVTCHNOP_expand_array: the next 1024 event words in frame `gfn`. -EOPNOTSUPP before
  // init_control, -ENOSPC beyond max_ports, -EINVAL for a frame that is not guest memory.
  // `reraise` gets the ports of the new page that were pending meanwhile.
  int64_t ExpandArray(uint64_t gfn, std::vector<uint32_t>* reraise);
  // Back to 2-level (EVTCHNOP_reset): everything is forgotten.
  void Reset();

  // A port just allocated: the default priority, its queue forgotten.
  void InitPort(uint32_t port);
  // EVTCHNOP_set_priority: -EINVAL beyond the lowest priority (15).
  int64_t SetPriority(uint32_t port, uint32_t priority);
  // A closed port is no longer pending (its word, if linked, is the guest's to unlink).
  void ClearPending(uint32_t port);

  bool IsPending(uint32_t port) const;
  bool IsMasked(uint32_t port) const;
  // LINKED: the guest has not consumed it yet; such a port is not given out again.
  bool IsBusy(uint32_t port) const;

  struct Raised {
    bool newly_pending = false;
    bool masked = false;
    bool ready = false;  // a READY bit went from 0 to 1: the vCPU's upcall_pending must be set
  };
  // Raises `port` for `vcpu` (its notify vCPU).
  Raised Raise(uint32_t port, uint32_t vcpu);
  // EVTCHNOP_unmask: clears MASKED; a pending port is linked now.
  Raised Unmask(uint32_t port, uint32_t vcpu);

 private:
  struct Queue {
    uint32_t tail = 0;
  };
  struct VcpuQueues {
    uint8_t* control_block = nullptr;  // ready @0, head[16] @8
    std::array<Queue, kFifoPriorities> queues{};
  };
  struct PortState {
    uint8_t priority = kFifoDefaultPriority;
    std::optional<std::pair<uint32_t, uint8_t>> last_queue;  // (vCPU, priority) it was last linked on
    bool pending_without_word = false;
  };
  uint32_t* Word(uint32_t port) const;
  // Sets the LINK of `tail`'s word to `port` if the tail is still LINKED.
  bool SetLink(uint32_t* tail, uint32_t port);
  Raised Link(uint32_t port, uint32_t vcpu, uint32_t* word);

  memory::GuestMemory& memory_;
  accel::Accelerator& accelerator_;
  const uint32_t max_ports_;
  bool active_ = false;
  std::vector<VcpuQueues> vcpus_;
  std::vector<uint32_t*> pages_;  // event-word pages, in order
  std::vector<PortState> ports_;
};

}  // namespace xenkvm::xen

#endif  // XENKVM_COMPONENTS_XEN_FIFO_EVENTS_H_
