#include "components/loader/pvh_loader.h"

#include <elf.h>

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "third_party/xen_public.h"

namespace xenkvm::loader {
namespace {

using memory::GuestAddress;
using ::testing::HasSubstr;

// Builds small ELF files: one PT_LOAD per segment given, and a PT_NOTE with the PVH entry.
struct SegmentSpec {
  uint64_t paddr;
  std::vector<uint8_t> bytes;
  uint64_t memsz;
};

class ElfBuilder {
 public:
  bool elf64 = true;
  uint16_t machine = EM_X86_64;
  std::vector<SegmentSpec> segments = {{0x100000, std::vector<uint8_t>(64, 0x90), 0x2000}};
  std::optional<uint64_t> entry = 0x100000;
  uint32_t entry_size = 4;
  bool note_as_section = false;  // the note in an SHT_NOTE section instead of a PT_NOTE segment

  std::vector<uint8_t> Build() const {
    return elf64 ? BuildAs<Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr>(ELFCLASS64)
                 : BuildAs<Elf32_Ehdr, Elf32_Phdr, Elf32_Shdr>(ELFCLASS32);
  }

 private:
  // One layout for both classes: the headers, each PT_LOAD's bytes, then the note.
  template <typename Ehdr, typename Phdr, typename Shdr>
  std::vector<uint8_t> BuildAs(uint8_t elf_class) const {
    std::vector<uint8_t> note;
    if (entry) {
      Put32(note, 4);
      Put32(note, entry_size);
      Put32(note, XEN_ELFNOTE_PHYS32_ENTRY);
      note.insert(note.end(), {'X', 'e', 'n', 0});
      if (entry_size == 8) {
        Put64(note, *entry);
      } else {
        Put32(note, static_cast<uint32_t>(*entry));
      }
    }
    const size_t phnum = segments.size() + (note_as_section ? 0 : 1);
    const size_t shoff = sizeof(Ehdr) + phnum * sizeof(Phdr);
    size_t cursor = shoff + (note_as_section ? sizeof(Shdr) : 0);
    std::vector<uint64_t> offsets;
    for (const SegmentSpec& segment : segments) {
      offsets.push_back(cursor);
      cursor += segment.bytes.size();
    }
    const size_t note_at = cursor;
    std::vector<uint8_t> file(note_at + note.size(), 0);
    auto put = [&file](size_t at, const auto& object) { std::memcpy(file.data() + at, &object, sizeof(object)); };
    if (!note.empty()) std::memcpy(file.data() + note_at, note.data(), note.size());
    Ehdr h{};
    Ident(h.e_ident, elf_class);
    h.e_type = ET_EXEC;
    h.e_machine = machine;
    h.e_version = EV_CURRENT;
    h.e_phoff = sizeof(Ehdr);
    h.e_ehsize = sizeof(Ehdr);
    h.e_phentsize = sizeof(Phdr);
    h.e_phnum = phnum;
    if (note_as_section) {
      h.e_shoff = shoff, h.e_shentsize = sizeof(Shdr), h.e_shnum = 1;
    }
    put(0, h);
    for (size_t i = 0; i < segments.size(); ++i) {
      if (!segments[i].bytes.empty()) {
        std::memcpy(file.data() + offsets[i], segments[i].bytes.data(), segments[i].bytes.size());
      }
      Phdr p{};
      p.p_type = PT_LOAD;
      p.p_offset = offsets[i];
      p.p_paddr = p.p_vaddr = segments[i].paddr;
      p.p_filesz = segments[i].bytes.size();
      p.p_memsz = segments[i].memsz;
      put(sizeof(Ehdr) + i * sizeof(Phdr), p);
    }
    if (note_as_section) {
      Shdr section{};
      section.sh_type = SHT_NOTE, section.sh_offset = note_at, section.sh_size = note.size();
      put(shoff, section);
    } else {
      Phdr p{};
      p.p_type = PT_NOTE, p.p_offset = note_at, p.p_filesz = p.p_memsz = note.size();
      put(sizeof(Ehdr) + segments.size() * sizeof(Phdr), p);
    }
    return file;
  }

  static void Ident(unsigned char* ident, uint8_t cls) {
    std::memcpy(ident, ELFMAG, SELFMAG);
    ident[EI_CLASS] = cls;
    ident[EI_DATA] = ELFDATA2LSB;
    ident[EI_VERSION] = EV_CURRENT;
  }
  static void Put32(std::vector<uint8_t>& v, uint32_t x) {
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
  }
  static void Put64(std::vector<uint8_t>& v, uint64_t x) {
    for (int i = 0; i < 8; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
  }
};

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto regions = RamRegions(8 * kMiB);
    ASSERT_TRUE(regions.ok());
    auto memory = memory::GuestMemory::Create(*regions);
    ASSERT_TRUE(memory.ok());
    memory_ = std::make_unique<memory::GuestMemory>(std::move(memory).value());
  }
  absl::StatusOr<LoadedKernel> Load(const std::vector<uint8_t>& file) {
    std::vector<ReservedRange> reserved = ReservedRanges();
    return LoadPvhKernel(file, *memory_, reserved);
  }
  void ExpectRefused(const ElfBuilder& elf, absl::string_view why) {
    ExpectRefused(elf.Build(), why);
  }
  void ExpectRefused(const std::vector<uint8_t>& file, absl::string_view why) {
    absl::StatusOr<LoadedKernel> loaded = Load(file);
    ASSERT_FALSE(loaded.ok()) << "accepted a file that should be refused for: " << why;
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(loaded.status().message(), HasSubstr(why));
  }
  std::unique_ptr<memory::GuestMemory> memory_;
};

TEST_F(LoaderTest, LoadsElf64AndZeroesBeyondFileSize) {
  ASSERT_TRUE(memory_->Write(GuestAddress(0x100000), std::vector<uint8_t>(0x2000, 0xff)).ok());
  ElfBuilder elf;
  elf.segments = {{0x100000, {1, 2, 3, 4}, 0x2000}, {0x200000, {5}, 1}};
  elf.entry = 0x100002;
  absl::StatusOr<LoadedKernel> kernel = Load(elf.Build());
  ASSERT_TRUE(kernel.ok()) << kernel.status();
  EXPECT_EQ(kernel->entry, 0x100002u);
  EXPECT_EQ(kernel->start, 0x100000u);
  EXPECT_EQ(kernel->end, 0x200001u);
  EXPECT_TRUE(kernel->elf64);
  EXPECT_EQ(*memory_->ReadObject<uint32_t>(GuestAddress(0x100000)), 0x04030201u);
  EXPECT_EQ(*memory_->ReadObject<uint64_t>(GuestAddress(0x101ff8)), 0u);  // memsz beyond filesz
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(GuestAddress(0x200000)), 5);
}

TEST_F(LoaderTest, LoadsElf32IncludingX86_64Machine) {
  for (uint16_t machine : {uint16_t{EM_386}, uint16_t{EM_X86_64}}) {
    ElfBuilder elf;
    elf.elf64 = false;
    elf.machine = machine;
    absl::StatusOr<LoadedKernel> kernel = Load(elf.Build());
    ASSERT_TRUE(kernel.ok()) << kernel.status();
    EXPECT_FALSE(kernel->elf64);
    EXPECT_EQ(kernel->entry, 0x100000u);
  }
}

TEST_F(LoaderTest, FindsTheNoteInASectionAndAsAnEightByteValue) {
  ElfBuilder section;
  section.note_as_section = true;
  EXPECT_TRUE(Load(section.Build()).ok());
  ElfBuilder wide;
  wide.entry_size = 8;
  EXPECT_TRUE(Load(wide.Build()).ok());
}

TEST_F(LoaderTest, RefusesWhatIsNotAnX86Elf) {
  ExpectRefused(std::vector<uint8_t>{0x7f, 'E'}, "shorter than an ELF identification");
  std::vector<uint8_t> gzip(64, 0);
  gzip[0] = 0x1f, gzip[1] = 0x8b;
  ExpectRefused(gzip, "bad magic");
  std::vector<uint8_t> file = ElfBuilder().Build();
  file[EI_DATA] = ELFDATA2MSB;
  ExpectRefused(file, "little-endian");
  file = ElfBuilder().Build();
  file[EI_CLASS] = 7;
  ExpectRefused(file, "unknown ELF class");
  ElfBuilder arm;
  arm.machine = EM_AARCH64;
  ExpectRefused(arm, "not x86");
}

TEST_F(LoaderTest, RefusesTruncatedHeaders) {
  std::vector<uint8_t> file = ElfBuilder().Build();
  ExpectRefused(std::vector<uint8_t>(file.begin(), file.begin() + 40), "truncated ELF64 header");
  ElfBuilder elf32;
  elf32.elf64 = false;
  file = elf32.Build();
  ExpectRefused(std::vector<uint8_t>(file.begin(), file.begin() + 30), "truncated ELF32 header");
  file = ElfBuilder().Build();
  ExpectRefused(std::vector<uint8_t>(file.begin(), file.begin() + sizeof(Elf64_Ehdr) + 10),
                "program headers extend past the end");
  file = ElfBuilder().Build();
  reinterpret_cast<Elf64_Ehdr*>(file.data())->e_phoff = ~uint64_t{0} - 8;  // offset + size overflows
  ExpectRefused(file, "program headers extend past the end");
  file = ElfBuilder().Build();
  reinterpret_cast<Elf64_Ehdr*>(file.data())->e_phnum = 0;
  ExpectRefused(file, "no program headers");
}

TEST_F(LoaderTest, RefusesAMissingOrMalformedPvhNote) {
  ElfBuilder none;
  none.entry.reset();
  ExpectRefused(none, "no PVH entry point");
  ElfBuilder odd;
  odd.entry_size = 2;
  ExpectRefused(odd, "2-byte value");
  ElfBuilder high;
  high.entry_size = 8;
  high.entry = uint64_t{1} << 33;
  ExpectRefused(high, "above 4 GiB");
  ElfBuilder outside;
  outside.entry = 0x300000;
  ExpectRefused(outside, "outside every loaded segment");
  // A note whose description size runs past its segment.
  std::vector<uint8_t> file = ElfBuilder().Build();
  size_t note_at = file.size() - 20;  // 12-byte header, "Xen\0", a 4-byte value
  uint32_t huge = 0x1000;
  std::memcpy(file.data() + note_at + 4, &huge, 4);
  ExpectRefused(file, "runs past its note segment");
}

TEST_F(LoaderTest, RefusesBadSegments) {
  std::vector<uint8_t> file = ElfBuilder().Build();
  auto* phdr = reinterpret_cast<Elf64_Phdr*>(file.data() + sizeof(Elf64_Ehdr));
  phdr->p_offset = file.size() - 8;
  ExpectRefused(file, "extend past the end of the file");
  file = ElfBuilder().Build();
  phdr = reinterpret_cast<Elf64_Phdr*>(file.data() + sizeof(Elf64_Ehdr));
  phdr->p_memsz = 8;
  ExpectRefused(file, "above its memory size");
  file = ElfBuilder().Build();
  phdr = reinterpret_cast<Elf64_Phdr*>(file.data() + sizeof(Elf64_Ehdr));
  phdr->p_paddr = ~uint64_t{0} - 0xfff;
  ExpectRefused(file, "wraps the address space");

  ElfBuilder big;
  big.segments = {{0x100000, {0x90}, 16 * kMiB}};
  ExpectRefused(big, "outside guest RAM (8 MiB): give the VM more memory");
  ElfBuilder hole;
  hole.segments = {{0xd0000000, {0x90}, 0x1000}};
  hole.entry = 0xd0000000;
  ExpectRefused(hole, "outside guest RAM");
  ElfBuilder overlap;
  overlap.segments = {{0x100000, {0x90}, 0x2000}, {0x101000, {0x90}, 0x1000}};
  ExpectRefused(overlap, "overlap");
  ElfBuilder boot_info;
  boot_info.segments = {{0x5000, {0x90}, 0x2000}};
  boot_info.entry = 0x5000;
  ExpectRefused(boot_info, "overlaps the boot information page");
  ElfBuilder vga;
  vga.segments = {{0xb8000, {0x90}, 0x1000}};
  vga.entry = 0xb8000;
  ExpectRefused(vga, "legacy VGA/BIOS hole");
  ElfBuilder empty;
  empty.segments = {{0x100000, {}, 0}};
  ExpectRefused(empty, "no loadable segments");
}

TEST_F(LoaderTest, StartInfoCarriesCommandLineModulesAndMemoryMap) {
  ElfBuilder elf;
  absl::StatusOr<LoadedKernel> kernel = Load(elf.Build());
  ASSERT_TRUE(kernel.ok());
  std::vector<BootModule> modules = {{{1, 2, 3}, "first"}, {std::vector<uint8_t>(5000, 7), ""}};
  absl::StatusOr<uint32_t> start_info = WriteStartInfo(*memory_, *kernel, "console=hvc0", modules, 0xe0000);
  ASSERT_TRUE(start_info.ok()) << start_info.status();
  EXPECT_EQ(*start_info, kBootInfoAddress);
  hvm_start_info info = *memory_->ReadObject<hvm_start_info>(GuestAddress(*start_info));
  EXPECT_EQ(info.magic, XEN_HVM_START_MAGIC_VALUE);
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.cmdline_paddr, kCommandLineAddress);
  EXPECT_EQ(info.rsdp_paddr, 0xe0000u);
  char cmdline[16] = {};
  ASSERT_TRUE(memory_->Read(GuestAddress(kCommandLineAddress), std::span(reinterpret_cast<uint8_t*>(cmdline), 13)).ok());
  EXPECT_STREQ(cmdline, "console=hvc0");

  ASSERT_EQ(info.nr_modules, 2u);
  hvm_modlist_entry first = *memory_->ReadObject<hvm_modlist_entry>(GuestAddress(info.modlist_paddr));
  hvm_modlist_entry second =
      *memory_->ReadObject<hvm_modlist_entry>(GuestAddress(info.modlist_paddr + sizeof(hvm_modlist_entry)));
  EXPECT_EQ(first.paddr, 0x102000u);  // the first page above the kernel's 0x100000..0x101fff
  EXPECT_EQ(first.size, 3u);
  EXPECT_EQ(first.paddr % kPageSize, 0u);
  EXPECT_GT(second.paddr, first.cmdline_paddr);
  EXPECT_EQ(second.size, 5000u);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(GuestAddress(second.paddr + 4999)), 7);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(GuestAddress(first.cmdline_paddr)), 'f');

  // E820: RAM, the legacy hole, RAM above 1 MiB, the Xen pages.
  ASSERT_EQ(info.memmap_entries, 4u);
  std::vector<hvm_memmap_table_entry> map;
  for (uint32_t i = 0; i < info.memmap_entries; ++i) {
    map.push_back(*memory_->ReadObject<hvm_memmap_table_entry>(
        GuestAddress(info.memmap_paddr + i * sizeof(hvm_memmap_table_entry))));
  }
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, kLegacyHoleStart);
  EXPECT_EQ(map[0].type, uint32_t{XEN_HVM_MEMMAP_TYPE_RAM});
  EXPECT_EQ(map[1].type, uint32_t{XEN_HVM_MEMMAP_TYPE_RESERVED});
  EXPECT_EQ(map[2].addr, kLegacyHoleEnd);
  EXPECT_EQ(map[2].addr + map[2].size, 8 * kMiB);
  EXPECT_EQ(map[3].addr, kXenReservedBase);
  EXPECT_EQ(map[3].type, uint32_t{XEN_HVM_MEMMAP_TYPE_RESERVED});

  EXPECT_EQ(WriteStartInfo(*memory_, *kernel, std::string(kCommandLineMax, 'x'), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<BootModule> huge = {{std::vector<uint8_t>(16 * kMiB), ""}};
  EXPECT_THAT(WriteStartInfo(*memory_, *kernel, "", huge).status().message(), HasSubstr("more memory"));
}

TEST_F(LoaderTest, RamRegionsSplitAroundTheMmioHole) {
  auto small = RamRegions(64 * kMiB);
  ASSERT_TRUE(small.ok());
  ASSERT_EQ(small->size(), 2u);
  EXPECT_EQ((*small)[0].size, 64 * kMiB);
  EXPECT_EQ((*small)[1].start.value(), kXenReservedBase);
  auto large = RamRegions(4096 * kMiB);
  ASSERT_TRUE(large.ok());
  ASSERT_EQ(large->size(), 3u);
  EXPECT_EQ((*large)[0].size, kMmioHoleStart);
  EXPECT_EQ((*large)[2].start.value(), kFourGiB);
  EXPECT_EQ((*large)[2].size, 4096 * kMiB - kMmioHoleStart);
  EXPECT_FALSE(RamRegions(1 * kMiB).ok());
  EXPECT_FALSE(RamRegions(3 * kMiB + 5).ok());
}

}  // namespace
}  // namespace xenkvm::loader
