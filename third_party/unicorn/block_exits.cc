// Replaces Unicorn 2.1.1's x86-64 check_exit_request (weakened in the archive: ../BUILD.bazel).
//
// Unicorn's TCG front end calls it after every guest load and store, and it emits a test of the
// CPU's exit flag that leaves the translation block when the flag is set. QEMU never exits a block
// there: the instructions already run are not undone, yet the guest's RIP is only ever synced to
// the block's start, so after such an exit the engine resumes at the block's start and runs those
// instructions (a push, an increment) a second time. Any uc_emu_stop from another thread could
// land there. Emitting nothing leaves QEMU's own check at the start of each block, where RIP is
// synced from the block not started: every stop is then exact, from any thread.
//
// The cost: a stop asked for by a hook in the middle of a block takes effect at the block's end
// (as it always did for CPUID and OUT, which the emu backend relies on), and a guest write to
// unmapped memory, which ends the run with an error, lets the block's remaining instructions run
// first (the vCPU is dead either way).
extern "C" void check_exit_request_x86_64(void* /*tcg_context*/) {}
