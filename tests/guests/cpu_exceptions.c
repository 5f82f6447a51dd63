/* The CPU as an operating system uses it: a GDT with user segments and a TSS, user mode entered by
 * IRET and left by SYSCALL, INT n, exceptions and interrupts; page faults with every error-code bit
 * a kernel relies on and the right CR2; an IST stack; a non-identity (high-half) mapping; NX.
 * Each check names what it saw. Runs on emu, where the backend delivers all of this itself. */
#include "kit/kit.h"

#define KERNEL_CS 0x18
#define KERNEL_SS 0x20
#define USER_SS 0x33
#define USER_CS 0x3b
#define TSS_SELECTOR 0x40

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_PS 0x80ull
#define PTE_XD (1ull << 63)
#define ADDRESS_MASK 0x000ffffffffff000ull

#define TEST_REGION 0x40000000ul /* 1 GiB: remapped with 4 KiB pages below */
#define HIGH_ALIAS 0xffffffff80000000ul

/* mov $1, %eax; ret: code the test changes while it runs. */
static uint8_t patch_code[16] __attribute__((aligned(16))) = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3};

struct tss64 {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3, iomap_base;
} __attribute__((packed));

static uint64_t gdt[10] __attribute__((aligned(16)));
static struct tss64 tss __attribute__((aligned(16)));
static uint8_t kernel_stack[16384] __attribute__((aligned(16)));
static uint8_t ist_stack[8192] __attribute__((aligned(16)));
static uint8_t user_stack[8192] __attribute__((aligned(16)));
static uint64_t test_table[512] __attribute__((aligned(4096)));
static uint8_t test_pages[8][4096] __attribute__((aligned(4096)));
static uint64_t high_pdpt[512] __attribute__((aligned(4096)));

/* What the handlers saw. */
#define MAX_FAULTS 16
static volatile uint64_t fault_codes[MAX_FAULTS], fault_addresses[MAX_FAULTS];
static volatile int fault_count;
static volatile uint64_t fixup_rip; /* a #PF with this set resumes there instead of retrying */
static volatile uint64_t seen_cs, seen_ss, seen_rsp, seen_rip, seen_error, handler_cs, handler_stack;
static volatile int seen_vector = -1;
volatile uint64_t syscall_rcx, syscall_cs, syscall_r11, syscall_rsp, user_rsp_at_syscall;
uint64_t saved_kernel_rsp;

static uint64_t *table_at(uint64_t entry) { return (uint64_t *)(uintptr_t)(entry & ADDRESS_MASK); }
static uint64_t read_cr3(void) {
  uint64_t v;
  __asm__ volatile("mov %%cr3, %0" : "=r"(v));
  return v;
}
static uint64_t read_cs(void) {
  uint64_t v;
  __asm__ volatile("mov %%cs, %0" : "=r"(v));
  return v;
}
static void flush_tlb(void) { __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory"); }
static uint64_t rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo;
}

static void load_gdt_and_tss(void) {
  gdt[1] = 0x00cf9b000000ffffull; /* 0x08 kernel 32-bit code */
  gdt[2] = 0x00cf93000000ffffull; /* 0x10 kernel data */
  gdt[3] = 0x00af9b000000ffffull; /* 0x18 kernel 64-bit code */
  gdt[4] = 0x00cf93000000ffffull; /* 0x20 kernel stack (SYSCALL: STAR CS + 8) */
  gdt[5] = 0x00cffb000000ffffull; /* 0x28 user 32-bit code (SYSRET base) */
  gdt[6] = 0x00cff3000000ffffull; /* 0x30 user data */
  gdt[7] = 0x00affb000000ffffull; /* 0x38 user 64-bit code */
  uint64_t base = (uint64_t)(uintptr_t)&tss, limit = sizeof(tss) - 1;
  gdt[8] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) | (((limit >> 16) & 0xf) << 48) |
           (((base >> 24) & 0xff) << 56);
  gdt[9] = base >> 32;
  tss.rsp[0] = (uint64_t)(uintptr_t)(kernel_stack + sizeof(kernel_stack));
  tss.ist[0] = (uint64_t)(uintptr_t)(ist_stack + sizeof(ist_stack));
  tss.iomap_base = sizeof(tss);
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) descriptor = {sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt};
  __asm__ volatile(
      "lgdt %0\n"
      "pushq $0x18\n"
      "lea 1f(%%rip), %%rax\n"
      "pushq %%rax\n"
      "lretq\n"
      "1: mov $0x10, %%ax\n"
      "mov %%ax, %%ds\n"
      "mov %%ax, %%es\n"
      "mov $0x20, %%ax\n"
      "mov %%ax, %%ss\n"
      "mov $0x40, %%ax\n"
      "ltr %%ax\n" ::"m"(descriptor)
      : "rax", "memory");
}

/* Everything user-accessible; the test region in 4 KiB pages; the high-half alias; NX and WP on. */
static void build_mappings(void) {
  uint64_t *pml4 = table_at(read_cr3());
  pml4[0] |= PTE_U;
  uint64_t *pdpt = table_at(pml4[0]);
  for (int i = 0; i < 4; i++) {
    pdpt[i] |= PTE_U;
    uint64_t *pd = table_at(pdpt[i]);
    for (int j = 0; j < 512; j++) pd[j] |= PTE_U;
  }
  for (int i = 0; i < 8; i++) test_table[i] = (uint64_t)(uintptr_t)test_pages[i];
  test_table[0] |= PTE_P | PTE_W | PTE_U; /* normal */
  /* [1]: not present */
  test_table[2] |= PTE_P | PTE_U;         /* read-only */
  test_table[3] |= PTE_P | PTE_W;         /* supervisor only */
  test_table[4] |= PTE_P | PTE_W | PTE_XD; /* no execute */
  /* [5]: not present, for the kernel's own write */
  uint64_t *pd1 = table_at(pdpt[1]);
  pd1[0] = (uint64_t)(uintptr_t)test_table | PTE_P | PTE_W | PTE_U;
  high_pdpt[510] = pdpt[0] & (ADDRESS_MASK | PTE_P | PTE_W); /* 0xffffffff80000000 -> physical 0 */
  pml4[511] = (uint64_t)(uintptr_t)high_pdpt | PTE_P | PTE_W;
  kit_wrmsr(0xc0000080, rdmsr(0xc0000080) | (1 << 11)); /* EFER.NXE */
  __asm__ volatile("mov %%cr0, %%rax; or $0x10000, %%rax; mov %%rax, %%cr0" ::: "rax"); /* CR0.WP */
  flush_tlb();
}

/* ---- Handlers */

static void on_page_fault(uint32_t vector, struct kit_interrupt_frame *frame) {
  (void)vector;
  uint64_t cr2;
  __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  int n = fault_count;
  if (n < MAX_FAULTS) {
    fault_codes[n] = frame->error_code;
    fault_addresses[n] = cr2;
    fault_count = n + 1;
  }
  if (fixup_rip) {
    frame->rip = fixup_rip;
    fixup_rip = 0;
    return;
  }
  if (cr2 < TEST_REGION || cr2 >= TEST_REGION + 8 * 4096) {
    kit_printf("unexpected #PF at %lx, RIP %lx, error %lx\n", (unsigned long)cr2, (unsigned long)frame->rip,
               (unsigned long)frame->error_code);
    kit_power_off(98);
  }
  uint64_t *pte = &test_table[(cr2 - TEST_REGION) >> 12];
  if (!(*pte & PTE_P)) {
    *pte |= PTE_P | PTE_U; /* mapped read-only first, as a kernel maps a page it was asked to read */
  } else if (frame->error_code & 0x10) {
    *pte &= ~PTE_XD;
  } else if ((frame->error_code & 4) && !(*pte & PTE_U)) {
    *pte |= PTE_U;
  } else if (frame->error_code & 2) {
    *pte |= PTE_W;
  }
  __asm__ volatile("invlpg (%0)" ::"r"(cr2) : "memory");
}

static void record_frame(uint32_t vector, struct kit_interrupt_frame *frame) {
  uint8_t marker;
  seen_vector = (int)vector;
  seen_cs = frame->cs;
  seen_ss = frame->ss;
  seen_rsp = frame->rsp;
  seen_rip = frame->rip;
  seen_error = frame->error_code;
  handler_cs = read_cs();
  handler_stack = (uint64_t)(uintptr_t)&marker;
}

/* Traps taken in user mode, one per step of user_main: what each handler saw. */
struct trap_record {
  int vector;
  uint64_t error, cs, ss, rip, handler_cs, handler_stack;
};
static volatile struct trap_record traps[10];
static volatile int user_step;

static void on_user_trap(uint32_t vector, struct kit_interrupt_frame *frame) {
  record_frame(vector, frame);
  int step = user_step;
  if (step >= 0 && step < 10) {
    traps[step].vector = (int)vector;
    traps[step].error = seen_error;
    traps[step].cs = frame->cs;
    traps[step].ss = frame->ss;
    traps[step].rip = frame->rip;
    traps[step].handler_cs = handler_cs;
    traps[step].handler_stack = handler_stack;
  }
  if (vector == 13) { /* skip the faulting CLI (fa) or INT n (cd nn) */
    frame->rip += *(const uint8_t *)(uintptr_t)frame->rip == 0xcd ? 2 : 1;
  }
}

/* ---- User mode: entered by IRET, left by SYSCALL 0 (which returns from enter_user). */

void enter_user(uint64_t rip, uint64_t rsp);
void syscall_entry(void);
__asm__(
    ".text\n"
    ".globl enter_user\n"
    "enter_user:\n"
    "  push %rbx; push %rbp; push %r12; push %r13; push %r14; push %r15\n"
    "  mov %rsp, saved_kernel_rsp(%rip)\n"
    "  pushq $0x33\n"
    "  pushq %rsi\n"
    "  pushq $0x202\n"
    "  pushq $0x3b\n"
    "  pushq %rdi\n"
    "  iretq\n"
    ".globl syscall_entry\n"
    "syscall_entry:\n" /* RAX 0: back to the kernel; else RAX = RDI + 1, by SYSRET */
    "  test %rax, %rax\n"
    "  jz 1f\n"
    "  mov %rcx, syscall_rcx(%rip)\n"
    "  mov %rsp, syscall_rsp(%rip)\n" /* SYSCALL leaves RSP alone */
    "  mov %r11, syscall_r11(%rip)\n"
    "  mov %cs, %rax\n"
    "  mov %rax, syscall_cs(%rip)\n"
    "  lea 1(%rdi), %rax\n"
    "  sysretq\n"
    "1:\n"
    "  mov saved_kernel_rsp(%rip), %rsp\n"
    "  pop %r15; pop %r14; pop %r13; pop %r12; pop %rbp; pop %rbx\n"
    "  ret\n");

static volatile uint64_t user_results[8];

static uint64_t user_syscall(uint64_t number, uint64_t argument) {
  uint64_t result;
  __asm__ volatile("mov %%rsp, %1\n syscall"
                   : "=a"(result), "=m"(user_rsp_at_syscall)
                   : "a"(number), "D"(argument)
                   : "rcx", "r11", "memory");
  return result;
}

static void user_main(void) {
  volatile uint8_t *region = (volatile uint8_t *)TEST_REGION;
  user_step = 1;
  user_results[0] = region[0x1000 + 5]; /* not present: #PF U, mapped read-only, read again */
  region[0x1000 + 6] = 0x66;            /* read-only now: #PF P|W|U */
  region[0x2000] = 0x22;                /* read-only: #PF P|W|U */
  user_results[1] = region[0x3000];     /* supervisor page: #PF P|U */
  user_step = 2;
  user_results[2] = user_syscall(7, 41);
  user_results[5] = user_rsp_at_syscall;
  user_step = 3;
  uint64_t from_int;
  __asm__ volatile("int $0x80" : "=a"(from_int) : "a"(0) : "memory");
  user_results[3] = from_int;
  user_step = 4;
  __asm__ volatile("int3" ::: "memory");
  user_step = 5;
  __asm__ volatile("cli" ::: "memory"); /* IOPL 0: #GP(0), skipped by the handler */
  user_step = 6;
  __asm__ volatile("int $0x81" ::: "memory"); /* a DPL-0 gate: #GP(0x40a), skipped */
  user_step = 7;
  __asm__ volatile("int $0x41" ::: "memory"); /* a DPL-3 gate with IST 1 */
  user_step = 8;
  user_syscall(0, 0);
}

static void on_int80(uint32_t vector, struct kit_interrupt_frame *frame) {
  record_frame(vector, frame);
  __asm__ volatile("" ::: "memory");
  /* RAX is restored by the stub: report through memory instead */
  user_results[4] = frame->cs | (frame->ss << 16);
}

/* ---- The checks */

static bool in_stack(uint64_t address, const uint8_t *stack, size_t size) {
  return address >= (uint64_t)(uintptr_t)stack && address < (uint64_t)(uintptr_t)(stack + size);
}

static int add_one(int x) { return x + 1; }
static volatile uint32_t high_marker = 0x51ab1e;

static void check_kernel_faults(void) {
  /* A kernel write to a not-present page: reported as a read (the access kind is unknown), then as
   * a write to the read-only page it was mapped as. */
  fault_count = 0;
  volatile uint8_t *region = (volatile uint8_t *)TEST_REGION;
  region[0x5000 + 8] = 0x55;
  KIT_CHECK(fault_count == 2);
  KIT_CHECK(fault_codes[0] == 0 && fault_addresses[0] == TEST_REGION + 0x5008);
  KIT_CHECK(fault_codes[1] == (1 | 2));
  KIT_CHECK(region[0x5008] == 0x55);
  kit_printf("kernel write to a missing page: #PF %lx then %lx\n", (unsigned long)fault_codes[0],
             (unsigned long)fault_codes[1]);
  /* CR2 keeps the last fault's address across the emulator's stops (an interrupt is one). */
  __asm__ volatile("int $0x40" ::: "memory");
  uint64_t cr2;
  __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  KIT_CHECK(cr2 == TEST_REGION + 0x5008);

  /* A fetch from a no-execute page: P|I/D, CR2 = the target. */
  fault_count = 0;
  static const uint8_t code[] = {0x8d, 0x47, 0x01, 0xc3}; /* lea 1(%rdi), %eax; ret */
  memcpy(test_pages[4], code, sizeof(code));
  int (*nx_function)(int) = (int (*)(int))(TEST_REGION + 0x4000);
  KIT_CHECK(nx_function(41) == 42);
  KIT_CHECK(fault_count == 1 && fault_codes[0] == (1 | 0x10) && fault_addresses[0] == TEST_REGION + 0x4000);
  kit_printf("fetch from an NX page: #PF %lx\n", (unsigned long)fault_codes[0]);

  /* A non-identity mapping: data and code through the high-half alias. */
  KIT_CHECK(*(volatile uint32_t *)(HIGH_ALIAS + (uintptr_t)&high_marker) == 0x51ab1e);
  int (*high_add_one)(int) = (int (*)(int))(HIGH_ALIAS + (uintptr_t)&add_one);
  KIT_CHECK(high_add_one(1) == 2);
  /* A fault there: CR2 is the high address, and the handler's fixup resumes. */
  fault_count = 0;
  uint64_t missing = 0xffffff0000001234ul, value = 0;
  __asm__ volatile(
      "lea 1f(%%rip), %%rcx\n"
      "mov %%rcx, %[fixup]\n"
      "mov (%[address]), %[value]\n"
      "1:\n"
      : [value] "+r"(value), [fixup] "=m"(fixup_rip)
      : [address] "r"(missing)
      : "rcx", "memory");
  KIT_CHECK(fault_count == 1 && fault_addresses[0] == missing && fault_codes[0] == 0);
  kit_printf("high-half alias: data and code; #PF at %lx\n", (unsigned long)fault_addresses[0]);

  /* Code changed through the alias, then SERIALIZE (as Linux's sync_core): the new code runs. */
  uint32_t eax, ebx, ecx, edx;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
  KIT_CHECK(edx & (1u << 14)); /* SERIALIZE offered */
  int (*patched)(void) = (int (*)(void))(uintptr_t)patch_code;
  KIT_CHECK(patched() == 1);
  ((volatile uint8_t *)(HIGH_ALIAS + (uintptr_t)patch_code))[1] = 2; /* mov $2, %eax */
  __asm__ volatile(".byte 0x0f, 0x01, 0xe8" ::: "memory");           /* serialize */
  KIT_CHECK(patched() == 2);

  /* INT n through an IST gate from the kernel: the handler runs on the IST stack. */
  seen_vector = -1;
  __asm__ volatile("int $0x40" ::: "memory");
  KIT_CHECK(seen_vector == 0x40 && in_stack(handler_stack, ist_stack, sizeof(ist_stack)));
  KIT_CHECK(seen_cs == KERNEL_CS);
}

static void check_user_mode(void) {
  kit_wrmsr(0xc0000081, (0x28ull << 48) | ((uint64_t)KERNEL_CS << 32)); /* STAR */
  kit_wrmsr(0xc0000082, (uint64_t)(uintptr_t)syscall_entry);             /* LSTAR */
  kit_wrmsr(0xc0000084, 0x200);                                          /* FMASK: IF */
  kit_wrmsr(0xc0000080, rdmsr(0xc0000080) | 1);                          /* EFER.SCE */
  fault_count = 0;
  enter_user((uint64_t)(uintptr_t)user_main, (uint64_t)(uintptr_t)(user_stack + sizeof(user_stack)));
  KIT_CHECK(user_step == 8);
  KIT_CHECK(read_cs() == KERNEL_CS);

  /* The page faults, with U set and CR2 right. */
  static const uint64_t expected_codes[] = {4, 4 | 2 | 1, 4 | 2 | 1, 4 | 1};
  static const uint64_t expected_addresses[] = {TEST_REGION + 0x1005, TEST_REGION + 0x1006, TEST_REGION + 0x2000,
                                                TEST_REGION + 0x3000};
  KIT_CHECK(fault_count == 4);
  for (int i = 0; i < 4 && i < fault_count; i++) {
    kit_printf("user #PF %d: error %lx at %lx\n", i, (unsigned long)fault_codes[i], (unsigned long)fault_addresses[i]);
    KIT_CHECK(fault_codes[i] == expected_codes[i]);
    KIT_CHECK(fault_addresses[i] == expected_addresses[i]);
  }
  KIT_CHECK(test_pages[1][6] == 0x66 && test_pages[2][0] == 0x22);

  /* SYSCALL/SYSRET. */
  KIT_CHECK(user_results[2] == 42);
  KIT_CHECK(syscall_cs == KERNEL_CS);
  KIT_CHECK((syscall_r11 & 0x200) != 0);
  kit_printf("syscall: RSP %lx at SYSCALL, %lx in the handler\n", (unsigned long)user_results[5],
             (unsigned long)syscall_rsp);
  KIT_CHECK(syscall_rsp == user_results[5]);
  kit_printf("syscall: RCX %lx, CS %lx, R11 %lx\n", (unsigned long)syscall_rcx, (unsigned long)syscall_cs,
             (unsigned long)syscall_r11);
  /* INT 0x80 from user mode arrived on the TSS's RSP0 stack with the user's CS and SS. */
  KIT_CHECK(user_results[4] == (USER_CS | (USER_SS << 16)));
}

static void check_user_traps(void) {
  /* user_main step 4: int3 (a DPL-3 gate): a trap, RIP past it, on the RSP0 stack at CPL 0. */
  KIT_CHECK(traps[4].vector == 3 && traps[4].cs == USER_CS && traps[4].ss == USER_SS);
  KIT_CHECK(*(const uint8_t *)(uintptr_t)(traps[4].rip - 1) == 0xcc);
  KIT_CHECK(traps[4].handler_cs == KERNEL_CS && in_stack(traps[4].handler_stack, kernel_stack, sizeof(kernel_stack)));
  /* step 5: CLI at CPL 3 with IOPL 0: #GP(0), a fault (RIP at the CLI). */
  KIT_CHECK(traps[5].vector == 13 && traps[5].error == 0 && traps[5].cs == USER_CS);
  KIT_CHECK(*(const uint8_t *)(uintptr_t)traps[5].rip == 0xfa);
  /* step 6: INT 0x81 through a DPL-0 gate: #GP with the IDT error code (0x81 << 3 | IDT). */
  KIT_CHECK(traps[6].vector == 13 && traps[6].error == ((0x81 << 3) | 2));
  /* step 7: INT 0x41 through a DPL-3 gate with IST 1: the IST stack. */
  KIT_CHECK(traps[7].vector == 0x41 && traps[7].cs == USER_CS &&
            in_stack(traps[7].handler_stack, ist_stack, sizeof(ist_stack)));
  for (int step = 4; step <= 7; step++) {
    kit_printf("user step %d: vector %d error %lx from CS %lx\n", step, traps[step].vector,
               (unsigned long)traps[step].error, (unsigned long)traps[step].cs);
  }
}

int guest_main(const struct hvm_start_info *start_info) {
  (void)start_info;
  load_gdt_and_tss();
  build_mappings();
  kit_set_interrupt_handler(14, on_page_fault);
  kit_set_interrupt_handler(0x80, on_int80);
  kit_set_gate_options(0x80, 3, 0);
  kit_set_interrupt_handler(3, on_user_trap);
  kit_set_gate_options(3, 3, 0);
  kit_set_interrupt_handler(13, on_user_trap);
  kit_set_interrupt_handler(0x40, record_frame);
  kit_set_gate_options(0x40, 0, 1);
  kit_set_interrupt_handler(0x41, on_user_trap);
  kit_set_gate_options(0x41, 3, 1);
  check_kernel_faults();
  check_user_mode();
  check_user_traps();
  return 0;
}
