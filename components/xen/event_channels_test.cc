// Event channels: EVTCHNOP_* against guest memory, limits, the backends' side, injection.
#include <atomic>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "components/base/event_loop.h"
#include "components/xen/shim_test_fixture.h"

namespace xenkvm::xen {
namespace {

using ::testing::HasSubstr;

TEST_F(ShimTest, LoopbackSendRaisesTheUpcallAndCountsIt) {
  MapSharedInfo();
  int64_t a = AllocUnbound();
  ASSERT_GT(a, 0);
  Put(evtchn_bind_interdomain_t{DOMID_SELF, static_cast<uint32_t>(a), 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_interdomain), 0);
  uint32_t b = Get<evtchn_bind_interdomain_t>().local_port;
  // The bind raised b; clear it as a guest's handler would.
  memory_->WriteObject(GuestAddress(kSharedInfo + 0x800), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo), uint64_t{0}).IgnoreError();       // upcall_pending
  memory_->WriteObject(GuestAddress(kSharedInfo + 8), uint64_t{0}).IgnoreError();   // pending_sel
  ASSERT_EQ(PortOp(EVTCHNOP_send, b), 0);
  EXPECT_EQ(Get<uint64_t>(kSharedInfo + 0x800) >> a & 1, 1u);  // evtchn_pending
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 1);                     // vcpu_info[0].evtchn_upcall_pending
  EXPECT_EQ(Get<uint64_t>(kSharedInfo + 8) & 1, 1u);           // evtchn_pending_sel word 0
  const PortSnapshot* pa = Port(a);
  ASSERT_NE(pa, nullptr);
  EXPECT_EQ(pa->type, PortType::kInterdomain);
  EXPECT_EQ(pa->remote, "loopback");
  EXPECT_EQ(pa->target, b);
  EXPECT_TRUE(pa->pending);
  EXPECT_EQ(pa->counters.deliveries, 1u);
  EXPECT_EQ(pa->counters.upcalls, 1u);
  EXPECT_EQ(Port(b)->counters.sends, 1u);

  // Masked: pending, no upcall, counted; unmask delivers.
  memory_->WriteObject(GuestAddress(kSharedInfo + 0x800), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo + 8), uint64_t{0}).IgnoreError();
  memory_->WriteObject(GuestAddress(kSharedInfo + 0xa00), uint64_t{1} << a).IgnoreError();
  ASSERT_EQ(PortOp(EVTCHNOP_send, b), 0);
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 0);
  EXPECT_EQ(Port(a)->counters.masked, 1u);
  EXPECT_TRUE(Port(a)->masked);
  ASSERT_EQ(PortOp(EVTCHNOP_unmask, a), 0);
  EXPECT_EQ(Get<uint8_t>(kSharedInfo), 1);
  EXPECT_FALSE(Port(a)->masked);

  // Status, then close: the peer is unbound again.
  evtchn_status_t status{};
  status.dom = DOMID_SELF;
  status.port = b;
  Put(status);
  ASSERT_EQ(Evtchn(EVTCHNOP_status), 0);
  EXPECT_EQ(Get<evtchn_status_t>().status, uint32_t{EVTCHNSTAT_interdomain});
  EXPECT_EQ(Get<evtchn_status_t>().u.interdomain.port, static_cast<uint32_t>(a));
  ASSERT_EQ(PortOp(EVTCHNOP_close, b), 0);
  EXPECT_EQ(Port(a)->type, PortType::kUnbound);
  EXPECT_EQ(Port(b), nullptr);
}

TEST_F(ShimTest, BadPortsGetTheRightErrors) {
  MapSharedInfo();
  EXPECT_EQ(PortOp(EVTCHNOP_send, 0), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 4096), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 0xffffffff), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_send, 77), E(XEN_EINVAL));   // closed
  EXPECT_EQ(PortOp(EVTCHNOP_close, 77), E(XEN_EINVAL));
  EXPECT_EQ(PortOp(EVTCHNOP_unmask, 5000), E(XEN_EINVAL));
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  ASSERT_EQ(Evtchn(EVTCHNOP_bind_virq), 0);
  uint32_t timer = Get<evtchn_bind_virq_t>().port;
  EXPECT_EQ(PortOp(EVTCHNOP_send, timer), E(XEN_EINVAL));  // a VIRQ is not sent by the guest
  Put(evtchn_bind_vcpu_t{timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_vcpu), E(XEN_EINVAL));   // per-vCPU VIRQs stay put
  Put(evtchn_bind_virq_t{VIRQ_TIMER, 0, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_EEXIST));
  Put(evtchn_bind_virq_t{VIRQ_CONSOLE, 1, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_ENOENT));   // no vCPU 1 in this VM
  Put(evtchn_bind_virq_t{24, 0, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_virq), E(XEN_EINVAL));
  Put(evtchn_bind_interdomain_t{DOMID_SELF, timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_interdomain), E(XEN_EINVAL));  // not an unbound port
  Put(evtchn_bind_interdomain_t{9, timer, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_interdomain), E(XEN_EINVAL));  // another domain
  Put(evtchn_alloc_unbound_t{5, DOMID_SELF, 0});
  EXPECT_EQ(Evtchn(EVTCHNOP_alloc_unbound), E(XEN_ESRCH));
  EXPECT_EQ(Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_send, 0x7fff00000000}), E(XEN_EFAULT));
  EXPECT_EQ(Evtchn(EVTCHNOP_bind_pirq), E(XEN_ENOSYS));  // no PIRQs
}

TEST_F(ShimTest, PortExhaustionAndTheConfiguredLimit) {
  MapSharedInfo();
  int count = 0;
  int64_t port;
  while ((port = AllocUnbound()) > 0) {
    EXPECT_LT(port, 4096);
    ++count;
  }
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 4095);

  TearDown();
  XenConfig small;
  small.max_event_channels = 128;
  Build(small);
  count = 0;
  while ((port = AllocUnbound()) > 0) ++count;
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 127);
}

TEST_F(ShimTest, AThirtyTwoBitGuestNeverGetsAPortAbove1023) {
  MapSharedInfo(/*long_mode=*/false);
  int count = 0;
  int64_t port;
  while ((port = AllocUnbound(DOMID_SELF, /*long_mode=*/false)) > 0) {
    EXPECT_LT(port, 1024);
    ++count;
  }
  EXPECT_EQ(port, E(XEN_ENOSPC));
  EXPECT_EQ(count, 1023);
  EXPECT_EQ(PortOp(EVTCHNOP_send, 1024), E(XEN_EINVAL));
  // The 32-bit layout: pending words of 32 bits at 0x800, the mask at 0x880, selector at +4.
  ASSERT_TRUE(shim_->event_channels().InjectEvent(40).ok());
  EXPECT_EQ(Get<uint32_t>(kSharedInfo + 0x800 + 4) >> 8 & 1, 1u);
  EXPECT_EQ(Get<uint32_t>(kSharedInfo + 4) >> 1 & 1, 1u);  // word 1 of evtchn_pending_sel
  // xen_version platform_parameters: a 4-byte virt_start.
  Put(uint64_t{~uint64_t{0}});
  EXPECT_EQ(Call(__HYPERVISOR_xen_version, {XENVER_platform_parameters, kArg}, false), 0);
  EXPECT_EQ(Get<uint64_t>() >> 32, 0xffffffffu);  // the upper half untouched
}

TEST_F(ShimTest, BackendsBindNotifyAndHear) {
  MapSharedInfo();
  int64_t guest_port = AllocUnbound(/*remote=*/0);
  ASSERT_GT(guest_port, 0);
  int heard = 0;
  EXPECT_EQ(shim_->event_channels().BindBackend(999, [] {}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(shim_->event_channels().BindBackend(guest_port, [&heard] { ++heard; }).ok());
  EXPECT_EQ(Port(guest_port)->remote, "backend");
  ASSERT_EQ(PortOp(EVTCHNOP_send, guest_port), 0);
  EXPECT_EQ(heard, 1);  // no event loop here: the handler runs at once
  ASSERT_TRUE(shim_->event_channels().NotifyGuest(guest_port).ok());
  EXPECT_TRUE(Port(guest_port)->pending);
  ASSERT_TRUE(shim_->event_channels().UnbindBackend(guest_port).ok());
  EXPECT_EQ(Port(guest_port)->type, PortType::kUnbound);
  EXPECT_EQ(shim_->event_channels().NotifyGuest(guest_port).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<uint32_t> store = shim_->event_channels().AllocateBackendPort([&heard] { heard += 10; });
  ASSERT_TRUE(store.ok());
  shim_->SetHvmParam(HVM_PARAM_STORE_EVTCHN, *store);
  xen_hvm_param_t param{DOMID_SELF, 0, HVM_PARAM_STORE_EVTCHN, 0};
  Put(param);
  ASSERT_EQ(Call(__HYPERVISOR_hvm_op, {HVMOP_get_param, kArg}), 0);
  EXPECT_EQ(Get<xen_hvm_param_t>().value, *store);
  ASSERT_EQ(PortOp(EVTCHNOP_send, *store), 0);
  EXPECT_EQ(heard, 11);
}

// With a backend loop, handlers are posted to it, except those bound to run on the sender's
// thread (a backend's kick: an eventfd write, no loop wake-up in between).
TEST_F(ShimTest, BackendHandlersRunOnTheLoopOrOnTheSendersThread) {
  auto loop = base::EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  ASSERT_TRUE((*loop)->Start().ok());
  Build(XenConfig{}, loop->get());
  MapSharedInfo();
  const int64_t posted = AllocUnbound(/*remote=*/0), direct = AllocUnbound(/*remote=*/0);
  ASSERT_GT(posted, 0);
  ASSERT_GT(direct, 0);
  absl::Mutex mutex;
  std::optional<std::thread::id> posted_on, direct_on;
  ASSERT_TRUE(shim_->event_channels()
                  .BindBackend(posted, [&] {
                    absl::MutexLock lock(&mutex);
                    posted_on = std::this_thread::get_id();
                  })
                  .ok());
  ASSERT_TRUE(shim_->event_channels()
                  .BindBackend(
                      direct,
                      [&] {
                        absl::MutexLock lock(&mutex);
                        direct_on = std::this_thread::get_id();
                      },
                      EventChannels::HandlerThread::kSender)
                  .ok());
  ASSERT_EQ(PortOp(EVTCHNOP_send, direct), 0);
  {
    absl::MutexLock lock(&mutex);
    EXPECT_EQ(direct_on, std::this_thread::get_id());  // already run, here
  }
  ASSERT_EQ(PortOp(EVTCHNOP_send, posted), 0);
  {
    absl::MutexLock lock(&mutex);
    ASSERT_TRUE(mutex.AwaitWithTimeout(absl::Condition(+[](std::optional<std::thread::id>* on) { return on->has_value(); }, &posted_on),
                                       absl::Seconds(10)));
    EXPECT_NE(posted_on, std::this_thread::get_id());
  }
  // Unbound, even a sender-thread handler is gone for good.
  ASSERT_TRUE(shim_->event_channels().UnbindBackend(direct).ok());
  {
    absl::MutexLock lock(&mutex);
    direct_on.reset();
  }
  (void)PortOp(EVTCHNOP_send, direct);
  {
    absl::MutexLock lock(&mutex);
    EXPECT_FALSE(direct_on.has_value());
  }
  (*loop)->Stop();
  (*loop)->Join();
  vcpus_.clear();
  shim_.reset();  // before the loop it was given
}

// A handler on the sender's thread runs after the event channels' lock is released: it may
// notify the guest (xen-disk answers small reads there), which would deadlock under the lock.
TEST_F(ShimTest, ASendersHandlerMayNotifyTheGuest) {
  MapSharedInfo();
  const int64_t port = AllocUnbound(/*remote=*/0);
  ASSERT_GT(port, 0);
  absl::Status notified = absl::UnknownError("not run");
  ASSERT_TRUE(shim_->event_channels()
                  .BindBackend(
                      port, [&] { notified = shim_->event_channels().NotifyGuest(port); },
                      EventChannels::HandlerThread::kSender)
                  .ok());
  ASSERT_EQ(PortOp(EVTCHNOP_send, port), 0);
  EXPECT_TRUE(notified.ok()) << notified;
  EXPECT_TRUE(Port(port)->pending);
  EXPECT_EQ(Port(port)->counters.sends, 2u);  // the guest's and the backend's
}

// UnbindBackend returns only once a handler running on a sender's thread has finished, even when
// the guest closed the port meanwhile (the handler uses its backend, which goes after the unbind).
TEST_F(ShimTest, UnbindWaitsForASendersHandlerInProgress) {
  MapSharedInfo();
  const int64_t port = AllocUnbound(/*remote=*/0);
  ASSERT_GT(port, 0);
  absl::Notification started, release;
  std::atomic<bool> finished{false};
  ASSERT_TRUE(shim_->event_channels()
                  .BindBackend(
                      port,
                      [&] {
                        started.Notify();
                        release.WaitForNotification();
                        finished = true;
                      },
                      EventChannels::HandlerThread::kSender)
                  .ok());
  std::thread sender([&] { EXPECT_EQ(PortOp(EVTCHNOP_send, port), 0); });
  started.WaitForNotification();
  EXPECT_EQ(PortOp(EVTCHNOP_close, port), 0);  // other operations do not wait for the handler
  std::atomic<bool> unbound{false};
  std::thread unbinder([&] {
    EXPECT_TRUE(shim_->event_channels().UnbindBackend(port).ok());
    unbound = true;
    EXPECT_TRUE(finished.load());
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(unbound.load());
  release.Notify();
  sender.join();
  unbinder.join();
  EXPECT_TRUE(unbound.load());
  EXPECT_EQ(shim_->event_channels().UnbindBackend(port).code(), absl::StatusCode::kNotFound);  // once
}

TEST_F(ShimTest, InjectEventRefusesBadPorts) {
  EXPECT_EQ(shim_->event_channels().InjectEvent(0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shim_->event_channels().InjectEvent(4096).message(), HasSubstr("outside 1..4095"));
  EXPECT_EQ(shim_->event_channels().InjectEvent(12).code(), absl::StatusCode::kNotFound);
  int64_t port = AllocUnbound();
  ASSERT_TRUE(shim_->event_channels().InjectEvent(port).ok());
  EXPECT_EQ(Port(port)->counters.sends, 1u);
  EXPECT_EQ(Port(port)->counters.deliveries, 1u);
}

}  // namespace
}  // namespace xenkvm::xen
