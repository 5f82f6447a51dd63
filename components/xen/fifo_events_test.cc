// FIFO event channels through the shim: init_control's and expand_array's checks (hostile control
// blocks), queues by priority and link order, masking and unmask, consumed tails, busy ports,
// events pending across the switch, ports beyond 2-level's 4096, and reset back to 2-level.
#include <atomic>

#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

constexpr uint64_t kControl = 0x30000;  // the control block's page
constexpr uint64_t kWords = 0x31000;    // event words 0..1023
constexpr uint32_t kPending = 1u << 31, kMasked = 1u << 30, kLinked = 1u << 29, kLinkMask = (1u << 17) - 1;

class FifoTest : public ShimTest {
 protected:
  int64_t InitControl(uint64_t gfn, uint32_t offset, uint32_t vcpu = 0) {
    Put(evtchn_init_control_t{gfn, offset, vcpu, 0, {}});
    return Evtchn(EVTCHNOP_init_control);
  }
  int64_t Expand(uint64_t gfn) {
    Put(evtchn_expand_array_t{gfn});
    return Evtchn(EVTCHNOP_expand_array);
  }
  int64_t SetPriority(uint32_t port, uint32_t priority) {
    Put(evtchn_set_priority_t{port, priority});
    return Evtchn(EVTCHNOP_set_priority);
  }
  void StartFifo() {
    MapSharedInfo();
    ASSERT_EQ(InitControl(kControl >> 12, 0), 0);
    EXPECT_EQ(Get<evtchn_init_control_t>().link_bits, 17);
    ASSERT_EQ(Expand(kWords >> 12), 0);
  }
  // A loopback pair: returns the port that receives sends on `*sender`.
  uint32_t Pair(uint32_t* sender) {
    const int64_t a = AllocUnbound();
    EXPECT_GT(a, 0);
    Put(evtchn_bind_interdomain_t{DOMID_SELF, static_cast<uint32_t>(a), 0});
    EXPECT_EQ(Evtchn(EVTCHNOP_bind_interdomain), 0);
    *sender = Get<evtchn_bind_interdomain_t>().local_port;
    // Binding raised the new local port (Xen does, for events sent before the bind): consume it.
    Consume(*sender);
    return static_cast<uint32_t>(a);
  }
  uint32_t Word(uint32_t port) { return Get<uint32_t>(kWords + 4 * port); }
  void SetWord(uint32_t port, uint32_t value) { Put(value, kWords + 4 * port); }
  // The guest consumes `port`: unlinked and no longer pending.
  void Consume(uint32_t port) { SetWord(port, Word(port) & ~(kLinked | kLinkMask | kPending)); }
  uint32_t Head(uint32_t priority) { return Get<uint32_t>(kControl + 8 + 4 * priority); }
  uint32_t Ready() { return Get<uint32_t>(kControl); }
  void ClearReady() {
    Put(uint32_t{0}, kControl);
    Put(uint8_t{0}, kSharedInfo);  // vcpu_info[0].evtchn_upcall_pending
  }
};

TEST_F(FifoTest, ControlBlocksAndArraysAreChecked) {
  MapSharedInfo();
  EXPECT_EQ(Expand(kWords >> 12), E(XEN_EOPNOTSUPP));  // before init_control
  uint32_t sender = 0;
  const uint32_t port = Pair(&sender);
  EXPECT_EQ(SetPriority(port, 3), E(XEN_ENOSYS));  // 2-level has no priorities
  EXPECT_EQ(InitControl(kControl >> 12, 4), E(XEN_EINVAL));             // not 8-aligned
  EXPECT_EQ(InitControl(kControl >> 12, 4096 - 64), E(XEN_EINVAL));     // the block would cross the page
  EXPECT_EQ(InitControl(0x100000, 0), E(XEN_EINVAL));                   // not guest memory (16 MiB of RAM)
  EXPECT_EQ(InitControl(~uint64_t{0}, 0), E(XEN_EINVAL));
  EXPECT_EQ(InitControl(kControl >> 12, 0, 3), E(XEN_ENOENT));          // no such vCPU
  ASSERT_EQ(InitControl(kControl >> 12, 8), 0);
  EXPECT_EQ(InitControl(kControl >> 12, 0), E(XEN_EINVAL));             // once per vCPU
  EXPECT_EQ(Expand(0x100000), E(XEN_EINVAL));
  EXPECT_EQ(Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_init_control, 0xfffffff000}), E(XEN_EFAULT));
  EXPECT_EQ(SetPriority(port, 16), E(XEN_EINVAL));
  EXPECT_EQ(SetPriority(0, 3), E(XEN_EINVAL));
  EXPECT_EQ(SetPriority(port, 15), 0);
}

TEST_F(FifoTest, EventsQueueByPriorityInOrder) {
  StartFifo();
  uint32_t a1, a2, a3;
  const uint32_t b1 = Pair(&a1), b2 = Pair(&a2), b3 = Pair(&a3);
  ClearReady();
  ASSERT_EQ(SetPriority(b3, 0), 0);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a1), 0);
  EXPECT_EQ(Word(b1) & (kPending | kLinked), kPending | kLinked);
  EXPECT_EQ(Head(7), b1);
  EXPECT_EQ(Ready(), 1u << 7);
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 1);  // upcall_pending
  ASSERT_EQ(PortOp(EVTCHNOP_send, a2), 0);
  EXPECT_EQ(Word(b1) & kLinkMask, b2);  // linked behind b1
  EXPECT_EQ(Head(7), b1);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a3), 0);
  EXPECT_EQ(Head(0), b3);
  EXPECT_EQ(Ready(), (1u << 7) | 1u);
  EXPECT_EQ(Port(b2)->counters.deliveries, 1u);
  EXPECT_TRUE(Port(b2)->pending);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a2), 0);  // pending and linked already: nothing new
  EXPECT_EQ(Port(b2)->counters.deliveries, 1u);

  // The guest consumes queue 7; a new event finds the queue empty (its tail consumed) and heads it.
  Consume(b1);
  Consume(b2);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a2), 0);
  EXPECT_EQ(Head(7), b2);
  EXPECT_EQ(Word(b2) & kLinkMask, 0u);
}

TEST_F(FifoTest, MaskedEventsWaitForUnmask) {
  StartFifo();
  uint32_t a;
  const uint32_t b = Pair(&a);
  ClearReady();
  SetWord(b, kMasked);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a), 0);
  EXPECT_EQ(Word(b), kMasked | kPending);  // pending, not linked
  EXPECT_EQ(Ready(), 0u);
  EXPECT_EQ(Port(b)->counters.masked, 1u);
  EXPECT_TRUE(Port(b)->masked);
  ASSERT_EQ(PortOp(EVTCHNOP_unmask, b), 0);
  EXPECT_EQ(Word(b), kPending | kLinked);
  EXPECT_EQ(Head(7), b);
  EXPECT_EQ(Ready(), 1u << 7);
}

TEST_F(FifoTest, LinkedPortsAreNotGivenOutAgain) {
  StartFifo();
  uint32_t a;
  const uint32_t b = Pair(&a);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a), 0);
  ASSERT_EQ(PortOp(EVTCHNOP_close, b), 0);
  EXPECT_EQ(Word(b) & (kPending | kLinked), kLinked);  // closing clears PENDING; the link is the guest's
  const int64_t next = AllocUnbound();
  EXPECT_GT(next, 0);
  EXPECT_NE(next, static_cast<int64_t>(b));
  Consume(b);
  EXPECT_EQ(AllocUnbound(), static_cast<int64_t>(b));
}

TEST_F(FifoTest, EventsPendingAcrossTheSwitchArriveWithTheirWords) {
  MapSharedInfo();
  uint32_t a;
  const uint32_t b = Pair(&a);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a), 0);  // pending under 2-level
  ASSERT_EQ(InitControl(kControl >> 12, 0), 0);
  EXPECT_TRUE(Port(b)->pending);  // no word yet: kept
  EXPECT_TRUE(Port(b)->masked);   // as Xen: a port without a word reads masked
  ClearReady();
  ASSERT_EQ(Expand(kWords >> 12), 0);
  EXPECT_EQ(Word(b) & (kPending | kLinked), kPending | kLinked);
  EXPECT_EQ(Head(7), b);
}

TEST_F(FifoTest, MorePortsThanTwoLevelAndResetBack) {
  TearDown();
  XenConfig config;
  config.max_event_channels = 8192;
  Build(config);
  StartFifo();
  for (uint64_t page = 1; page < 5; ++page) ASSERT_EQ(Expand((kWords >> 12) + page), 0) << page;
  int64_t port = 0;
  for (int i = 0; i < 4200 && port >= 0; ++i) port = AllocUnbound();
  EXPECT_GE(port, 4096);  // beyond 2-level's ceiling
  for (uint64_t page = 5; page < 8; ++page) ASSERT_EQ(Expand((kWords >> 12) + page), 0) << page;
  EXPECT_EQ(Expand((kWords >> 12) + 8), E(XEN_ENOSPC));  // 8192 ports: 8 pages
  Put(evtchn_reset_t{DOMID_SELF});
  ASSERT_EQ(Evtchn(EVTCHNOP_reset), 0);
  EXPECT_EQ(Expand(kWords >> 12), E(XEN_EOPNOTSUPP));  // 2-level again
  uint32_t a;
  const uint32_t b = Pair(&a);
  ASSERT_EQ(PortOp(EVTCHNOP_send, a), 0);
  EXPECT_EQ(Get<uint64_t>(kSharedInfo + 0x800) >> b & 1, 1u);  // the 2-level pending bit
  EXPECT_EQ(InitControl(kControl >> 12, 0), 0);  // and FIFO may be set up again
}

}  // namespace
}  // namespace xenkvm::xen
