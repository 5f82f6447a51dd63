// The Xen shim's cost per hypercall, measured in the same run as a reference floor:
//   BM_XenVersion: dispatch alone (the cheapest hypercall);
//   BM_EvtchnSendUpcall: EVTCHNOP_send on a loopback port, the peer's pending bit, selector and
//     upcall_pending set and the upcall raised (the guest's handler work undone each time);
//   BM_EvtchnSendCoalesced: the same send while the event is still pending (nothing new to tell);
//   BM_EvtchnSendUpcallFifo: the same send under the FIFO ABI (PENDING and LINKED in the event
//     word, HEAD and READY in the control block, upcall_pending; the guest's consumption undone);
//   BM_ReferenceAtomicOr: three atomic ORs on guest-shared words, what delivery must do at least.
// The guest's trip into the VMM is the accelerator's (components/accel emu_benchmark). Not a test:
// `bazel run -c opt //components/xen:shim_benchmark`.
#include <atomic>

#include "benchmark/benchmark.h"
#include "components/accel/emu/emu_accelerator.h"
#include "components/xen/shim.h"
#include "third_party/xen_public.h"

namespace xenkvm::xen {
namespace {

using memory::GuestAddress;

constexpr uint64_t kArg = 0x10000;
constexpr uint64_t kSharedInfo = 0x20000;
constexpr uint64_t kControl = 0x30000;
constexpr uint64_t kWords = 0x31000;

struct Fixture {
  explicit Fixture(bool fifo = false) {
    memory = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{GuestAddress(0), 16 << 20}})).value());
    accelerator = std::move(accel::CreateEmuAccelerator(*memory)).value();
    shim = std::move(Shim::Create(XenConfig{}, *memory, *accelerator, {})).value();
    vcpu = std::move(accelerator->CreateVcpu(0, accel::PvhEntry{0x100000, 0, 0})).value();
    (void)shim->AttachVcpu(*vcpu);
    struct {
      uint16_t domid, size;
      uint32_t space;
      uint64_t idx, gpfn;
    } add = {DOMID_SELF, 0, XENMAPSPACE_shared_info, 0, kSharedInfo >> 12};
    (void)memory->WriteObject(GuestAddress(kArg), add);
    Call(__HYPERVISOR_memory_op, {XENMEM_add_to_physmap, kArg});
    if (fifo) {
      (void)memory->WriteObject(GuestAddress(kArg), evtchn_init_control_t{kControl >> 12, 0, 0, 0, {}});
      Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_init_control, kArg});
      (void)memory->WriteObject(GuestAddress(kArg), evtchn_expand_array_t{kWords >> 12});
      Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_expand_array, kArg});
    }
    (void)memory->WriteObject(GuestAddress(kArg), evtchn_alloc_unbound_t{DOMID_SELF, DOMID_SELF, 0});
    Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_alloc_unbound, kArg});
    a = memory->ReadObject<evtchn_alloc_unbound_t>(GuestAddress(kArg))->port;
    (void)memory->WriteObject(GuestAddress(kArg), evtchn_bind_interdomain_t{DOMID_SELF, a, 0});
    Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_bind_interdomain, kArg});
    b = memory->ReadObject<evtchn_bind_interdomain_t>(GuestAddress(kArg))->local_port;
    (void)memory->WriteObject(GuestAddress(kArg), b);
  }
  int64_t Call(uint64_t number, std::array<uint64_t, 6> args) {
    return static_cast<int64_t>(shim->Hypercall(*vcpu, accel::HypercallExit{number, args, true, 0}));
  }
  // What the guest's upcall handler does: clear upcall_pending, the selector and the port.
  void Acknowledge() {
    uint8_t* page = *memory->HostAddress(GuestAddress(kSharedInfo), 4096);
    std::memset(page, 0, 16);           // vcpu_info[0]: upcall_pending, mask, pending_sel
    std::memset(page + 0x800, 0, 8);    // evtchn_pending word 0
  }
  // The FIFO guest's handler: READY and HEAD taken, the port unlinked and no longer pending.
  void AcknowledgeFifo() {
    uint8_t* control = *memory->HostAddress(GuestAddress(kControl), 4096);
    uint8_t* words = *memory->HostAddress(GuestAddress(kWords), 4096);
    std::memset(control, 0, 72);
    std::memset(words + 4 * a, 0, 4);
    std::memset(words + 4 * b, 0, 4);  // raised once by the bind
    std::memset(*memory->HostAddress(GuestAddress(kSharedInfo), 4096), 0, 16);
  }
  std::unique_ptr<memory::GuestMemory> memory;
  std::unique_ptr<accel::Accelerator> accelerator;
  std::unique_ptr<Shim> shim;
  std::unique_ptr<accel::Vcpu> vcpu;
  uint32_t a = 0, b = 0;
};

void BM_XenVersion(benchmark::State& state) {
  Fixture f;
  for (auto _ : state) benchmark::DoNotOptimize(f.Call(__HYPERVISOR_xen_version, {XENVER_version}));
}

void BM_EvtchnSendUpcall(benchmark::State& state) {
  Fixture f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_send, kArg}));
    f.Acknowledge();
  }
}

void BM_EvtchnSendUpcallFifo(benchmark::State& state) {
  Fixture f(/*fifo=*/true);
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_send, kArg}));
    f.AcknowledgeFifo();
  }
}

void BM_EvtchnSendCoalesced(benchmark::State& state) {
  Fixture f;
  for (auto _ : state) benchmark::DoNotOptimize(f.Call(__HYPERVISOR_event_channel_op, {EVTCHNOP_send, kArg}));
}

void BM_ReferenceAtomicOr(benchmark::State& state) {
  alignas(64) std::atomic<uint64_t> words[3] = {0, 0, 0};
  for (auto _ : state) {
    words[0].fetch_or(1);
    words[1].fetch_or(1);
    words[2].fetch_or(1);
    words[0].store(0, std::memory_order_relaxed);
    benchmark::ClobberMemory();
  }
}

BENCHMARK(BM_XenVersion);
BENCHMARK(BM_EvtchnSendUpcall);
BENCHMARK(BM_EvtchnSendUpcallFifo);
BENCHMARK(BM_EvtchnSendCoalesced);
BENCHMARK(BM_ReferenceAtomicOr);

}  // namespace
}  // namespace xenkvm::xen
