// The patched archive (block_exits.cc) is what binaries link: a stop sent from another thread at
// any moment leaves the engine exactly between blocks. Two blocks that each bump a register and
// store it, chained by jumps: at every stop RIP names a block start and the counts agree with it.
// With Unicorn's own check_exit_request most stops land after a store, RIP at the block's start.
#include <unicorn/unicorn.h>

#include <atomic>
#include <cstdint>
#include <thread>

#include "gtest/gtest.h"

namespace {

constexpr uint64_t kCode = 0x1000;
constexpr uint64_t kSecondBlock = kCode + 10;

TEST(UnicornBlockExits, StopsFromAnotherThreadLandBetweenBlocks) {
  uc_engine* uc = nullptr;
  ASSERT_EQ(uc_open(UC_ARCH_X86, UC_MODE_64, &uc), UC_ERR_OK);
  ASSERT_EQ(uc_mem_map(uc, kCode, 0x10000, UC_PROT_ALL), UC_ERR_OK);
  const uint8_t code[] = {
      0x48, 0xff, 0xc0,                    // first:  inc %rax
      0x48, 0x89, 0x44, 0x24, 0xf8,        //         mov %rax, -8(%rsp)
      0xeb, 0x00,                          //         jmp second
      0x48, 0xff, 0xc3,                    // second: inc %rbx
      0x48, 0x89, 0x5c, 0x24, 0xf0,        //         mov %rbx, -16(%rsp)
      0xeb, static_cast<uint8_t>(-20),     //         jmp first
  };
  ASSERT_EQ(uc_mem_write(uc, kCode, code, sizeof(code)), UC_ERR_OK);
  uint64_t rsp = kCode + 0x8000;
  uc_reg_write(uc, UC_X86_REG_RSP, &rsp);

  std::atomic<bool> done{false};
  std::thread stopper([&] {
    for (uint32_t x = 1; !done; x = x * 1103515245 + 12345) {
      for (uint32_t i = 0; i < x % 2000; ++i) __asm__ volatile("" ::: "memory");  // a varying delay
      uc_emu_stop(uc);
    }
  });
  uint64_t rip = kCode;
  int misplaced = 0;
  for (int run = 0; run < 20000 && misplaced == 0; ++run) {
    ASSERT_EQ(uc_emu_start(uc, rip, 0x8000000000000001, 0, 0), UC_ERR_OK);
    uint64_t rax = 0, rbx = 0;
    uc_reg_read(uc, UC_X86_REG_RIP, &rip);
    uc_reg_read(uc, UC_X86_REG_RAX, &rax);
    uc_reg_read(uc, UC_X86_REG_RBX, &rbx);
    const bool between_blocks = (rip == kCode && rax == rbx) || (rip == kSecondBlock && rax == rbx + 1);
    if (!between_blocks) {
      ADD_FAILURE() << "run " << run << " stopped at RIP " << std::hex << rip << " with rax " << rax << ", rbx "
                    << rbx;
      ++misplaced;
    }
  }
  done = true;
  stopper.join();
  uc_close(uc);
}

}  // namespace
