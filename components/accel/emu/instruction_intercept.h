// Instructions the emu vCPU carries out before Unicorn does: the link wraps Unicorn's helpers for
// them (`ld --wrap`, the instruction_intercept target), so each first reaches the
// InstructionHandler installed on the thread that runs the engine.
// - RDMSR and WRMSR: Unicorn 2.1 carries both out itself, with no hook (unknown MSRs read as 0 and
//   writes to them are dropped; IA32_APIC_BASE reads as 0, which hides the boot CPU's BSP flag).
// - CPUID, SYSCALL and SYSENTER: Unicorn offers hooks, but its loop over them stops at the first
//   hook in the list once a stop is pending (`stop_request`), before reaching the one for the
//   instruction: a stop sent from another thread that lands earlier in the same block made the CPU
//   model answer a CPUID hypercall and skipped a SYSCALL, silently.
// - STI, POPF, IRET, SYSRET and SYSEXIT, which can set RFLAGS.IF: told before they run (each ends
//   its translation block), so an interrupt waiting for IF can be taken right after, as a CPU
//   takes it (Unicorn has no hook for them).
// - HLT and MWAIT: told before they end the run, which a stop from another thread can also end
//   at the same instant (the run loop must know which happened).
#ifndef XENKVM_COMPONENTS_ACCEL_EMU_INSTRUCTION_INTERCEPT_H_
#define XENKVM_COMPONENTS_ACCEL_EMU_INSTRUCTION_INTERCEPT_H_

#include <cstdint>
#include <optional>

namespace xenkvm::accel::emu {

// Runs on the emulation thread, inside uc_emu_start (or inside a uc_reg_read/uc_reg_write of an
// MSR on that thread), with the guest's registers current.
class InstructionHandler {
 public:
  virtual ~InstructionHandler() = default;
  // The value RDMSR returns, or nullopt for Unicorn's.
  virtual std::optional<uint64_t> OnRdmsr(uint32_t index) = 0;
  // True when the write was taken; false leaves it to Unicorn.
  virtual bool OnWrmsr(uint32_t index, uint64_t value) = 0;
  // True when the handler answered (EAX..EDX written); false leaves CPUID to the CPU model.
  virtual bool OnCpuid() = 0;
  // Unicorn never carries SYSCALL and SYSENTER out: it moves RIP past them after these return.
  virtual void OnSyscall() = 0;
  virtual void OnSysenter() = 0;
  // Before an instruction that can set RFLAGS.IF runs (it ends its translation block).
  virtual void BeforeInterruptFlagWrite() = 0;
  // Before HLT (or MWAIT) ends the run.
  virtual void BeforeHalt() = 0;
  // Before PAUSE (a spin-wait's hint) leaves the engine's loop, RIP past it.
  virtual void BeforePause() = 0;
};

// Installs `handler` for the calling thread and returns the one it replaces. For code that moves
// between threads while a handler is installed (the emu's run loop yields at each exit, and the
// next Run() may come from another thread).
InstructionHandler* ExchangeInstructionHandler(InstructionHandler* handler);

// Installs `handler` for the current thread while it lives; scopes nest.
class ScopedInstructionHandler {
 public:
  explicit ScopedInstructionHandler(InstructionHandler* handler);
  ~ScopedInstructionHandler();
  ScopedInstructionHandler(const ScopedInstructionHandler&) = delete;
  ScopedInstructionHandler& operator=(const ScopedInstructionHandler&) = delete;

 private:
  InstructionHandler* previous_;
};

}  // namespace xenkvm::accel::emu

#endif  // XENKVM_COMPONENTS_ACCEL_EMU_INSTRUCTION_INTERCEPT_H_
