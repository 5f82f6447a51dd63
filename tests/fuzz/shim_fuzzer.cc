// Fuzz target: one hypercall into the Xen shim with arbitrary number, arguments, ABI, privilege and
// guest-memory contents (the argument area and the shared_info page). Hypercalls that would wait
// (SCHEDOP_block, SCHEDOP_poll) are left out; everything else must return an answer, never crash.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "components/accel/emu/emu_accelerator.h"
#include "components/xen/shim.h"
#include "third_party/xen_public.h"

namespace {

using namespace xenkvm;

constexpr uint64_t kMemory = 4 << 20;
constexpr uint64_t kArea = 0x10000;  // what the fuzzer writes, and where arguments mostly point

struct World {
  World() {
    memory = std::make_unique<memory::GuestMemory>(
        std::move(memory::GuestMemory::Create({{memory::GuestAddress(0), kMemory}})).value());
    accelerator = std::move(accel::CreateEmuAccelerator(*memory)).value();
    xen::XenConfig config;
    config.vcpus = 2;
    config.max_event_channels = 256;  // exhaustion within reach
    shim = std::move(xen::Shim::Create(config, *memory, *accelerator, {})).value();
    for (uint32_t id = 0; id < 2; ++id) {
      vcpus.push_back(std::move(accelerator->CreateVcpu(id, id == 0 ? std::optional(accel::PvhEntry{0x100000, 0, 0})
                                                                      : std::nullopt))
                          .value());
      (void)shim->AttachVcpu(*vcpus.back());
    }
  }
  std::unique_ptr<memory::GuestMemory> memory;
  std::unique_ptr<accel::Accelerator> accelerator;
  std::unique_ptr<xen::Shim> shim;
  std::vector<std::unique_ptr<accel::Vcpu>> vcpus;
};

template <typename T>
T Take(const uint8_t*& data, size_t& size) {
  T value{};
  const size_t n = std::min(size, sizeof(T));
  std::memcpy(&value, data, n);
  data += n;
  size -= n;
  return value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();
  const uint8_t control = Take<uint8_t>(data, size);
  const uint64_t numbers[] = {__HYPERVISOR_set_timer_op,    __HYPERVISOR_memory_op, __HYPERVISOR_xen_version,
                              __HYPERVISOR_console_io,      __HYPERVISOR_vcpu_op,   __HYPERVISOR_sched_op,
                              __HYPERVISOR_event_channel_op, __HYPERVISOR_hvm_op,   Take<uint8_t>(data, size)};
  accel::HypercallExit call;
  call.number = numbers[(control & 0x0f) % std::size(numbers)];
  call.long_mode = (control & 0x10) == 0;
  call.cpl = (control & 0x20) ? 3 : 0;
  for (uint64_t& arg : call.args) {
    const uint64_t raw = Take<uint64_t>(data, size);
    // Mostly small numbers and pointers into the argument area, sometimes anything.
    arg = (raw & 3) == 0 ? raw : (raw & 1) ? kArea + ((raw >> 8) & 0xfff) : (raw >> 8) & 0x3f;
  }
  if (call.number == __HYPERVISOR_sched_op && (call.args[0] == SCHEDOP_block || call.args[0] == SCHEDOP_poll)) {
    return 0;
  }
  const size_t area = std::min<size_t>(size, 8192);
  if (area > 0) (void)world->memory->Write(memory::GuestAddress(kArea), std::span(data, area));
  accel::Vcpu& vcpu = *world->vcpus[(control >> 6) & 1];
  (void)world->shim->Hypercall(vcpu, call);
  (void)world->shim->Statistics();
  return 0;
}
