#include "components/loader/pvh_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/str_format.h"
#include "components/base/status.h"
#include "third_party/xen_public.h"

namespace xenkvm::loader {
namespace {

absl::Status Refuse(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("kernel image refused: ", why));
}

// A bounds-checked view of the file.
class FileView {
 public:
  explicit FileView(std::span<const uint8_t> file) : file_(file) {}
  size_t size() const { return file_.size(); }
  bool Contains(uint64_t offset, uint64_t length) const {
    return offset <= file_.size() && length <= file_.size() - offset;
  }
  template <typename T>
  std::optional<T> Read(uint64_t offset) const {
    if (!Contains(offset, sizeof(T))) return std::nullopt;
    T value;
    std::memcpy(&value, file_.data() + offset, sizeof(T));
    return value;
  }
  std::span<const uint8_t> Bytes(uint64_t offset, uint64_t length) const {
    return file_.subspan(offset, length);
  }

 private:
  std::span<const uint8_t> file_;
};

// One program or section header, whichever the class.
struct Segment {
  uint32_t type = 0;
  uint64_t offset = 0;
  uint64_t paddr = 0;
  uint64_t filesz = 0;
  uint64_t memsz = 0;
};

struct Header {
  bool elf64 = false;
  uint64_t phoff = 0, shoff = 0;
  uint16_t phentsize = 0, phnum = 0, shentsize = 0, shnum = 0;
};

absl::StatusOr<Header> ReadHeader(const FileView& file) {
  if (file.size() < EI_NIDENT) return Refuse("not an ELF file (shorter than an ELF identification)");
  auto ident = file.Bytes(0, EI_NIDENT);
  if (ident[EI_MAG0] != ELFMAG0 || ident[EI_MAG1] != ELFMAG1 || ident[EI_MAG2] != ELFMAG2 ||
      ident[EI_MAG3] != ELFMAG3) {
    return Refuse("not an ELF file (bad magic); xenkvm boots uncompressed ELF kernels (vmlinux) with a PVH note");
  }
  if (ident[EI_DATA] != ELFDATA2LSB) return Refuse("not a little-endian ELF file");
  Header header;
  if (ident[EI_CLASS] == ELFCLASS64) {
    std::optional<Elf64_Ehdr> ehdr = file.Read<Elf64_Ehdr>(0);
    if (!ehdr) return Refuse("truncated ELF64 header");
    if (ehdr->e_machine != EM_X86_64 && ehdr->e_machine != EM_386) {
      return Refuse(absl::StrFormat("ELF machine %u is not x86", ehdr->e_machine));
    }
    header = {true, ehdr->e_phoff, ehdr->e_shoff, ehdr->e_phentsize, ehdr->e_phnum, ehdr->e_shentsize,
              ehdr->e_shnum};
    if (header.phnum && header.phentsize != sizeof(Elf64_Phdr)) return Refuse("unexpected program header size");
    if (header.shnum && header.shentsize != sizeof(Elf64_Shdr)) return Refuse("unexpected section header size");
  } else if (ident[EI_CLASS] == ELFCLASS32) {
    std::optional<Elf32_Ehdr> ehdr = file.Read<Elf32_Ehdr>(0);
    if (!ehdr) return Refuse("truncated ELF32 header");
    // Xen's loader also takes 32-bit-class files whose machine is x86-64, and such kernels exist.
    if (ehdr->e_machine != EM_X86_64 && ehdr->e_machine != EM_386) {
      return Refuse(absl::StrFormat("ELF machine %u is not x86", ehdr->e_machine));
    }
    header = {false, ehdr->e_phoff, ehdr->e_shoff, ehdr->e_phentsize, ehdr->e_phnum, ehdr->e_shentsize,
              ehdr->e_shnum};
    if (header.phnum && header.phentsize != sizeof(Elf32_Phdr)) return Refuse("unexpected program header size");
    if (header.shnum && header.shentsize != sizeof(Elf32_Shdr)) return Refuse("unexpected section header size");
  } else {
    return Refuse(absl::StrFormat("unknown ELF class %u", ident[EI_CLASS]));
  }
  if (header.phnum == 0) return Refuse("no program headers");
  if (!file.Contains(header.phoff, uint64_t{header.phnum} * header.phentsize)) {
    return Refuse("program headers extend past the end of the file");
  }
  if (header.shnum != 0 && !file.Contains(header.shoff, uint64_t{header.shnum} * header.shentsize)) {
    return Refuse("section headers extend past the end of the file");
  }
  return header;
}

std::vector<Segment> ProgramHeaders(const FileView& file, const Header& header) {
  std::vector<Segment> segments;
  for (uint16_t i = 0; i < header.phnum; ++i) {
    uint64_t at = header.phoff + uint64_t{i} * header.phentsize;
    if (header.elf64) {
      Elf64_Phdr p = *file.Read<Elf64_Phdr>(at);
      segments.push_back({p.p_type, p.p_offset, p.p_paddr, p.p_filesz, p.p_memsz});
    } else {
      Elf32_Phdr p = *file.Read<Elf32_Phdr>(at);
      segments.push_back({p.p_type, p.p_offset, p.p_paddr, p.p_filesz, p.p_memsz});
    }
  }
  return segments;
}

// Note sections (SHT_NOTE), for files whose notes are not in a PT_NOTE segment.
std::vector<Segment> NoteSections(const FileView& file, const Header& header) {
  std::vector<Segment> notes;
  for (uint16_t i = 0; i < header.shnum; ++i) {
    uint64_t at = header.shoff + uint64_t{i} * header.shentsize;
    if (header.elf64) {
      Elf64_Shdr s = *file.Read<Elf64_Shdr>(at);
      if (s.sh_type == SHT_NOTE) notes.push_back({PT_NOTE, s.sh_offset, 0, s.sh_size, s.sh_size});
    } else {
      Elf32_Shdr s = *file.Read<Elf32_Shdr>(at);
      if (s.sh_type == SHT_NOTE) notes.push_back({PT_NOTE, s.sh_offset, 0, s.sh_size, s.sh_size});
    }
  }
  return notes;
}

uint64_t Align4(uint64_t value) { return (value + 3) & ~uint64_t{3}; }

// The PHYS32_ENTRY value from the "Xen" notes in `note`; nullopt if absent.
absl::StatusOr<std::optional<uint32_t>> FindPvhEntry(const FileView& file, const Segment& note) {
  if (!file.Contains(note.offset, note.filesz)) return Refuse("a note extends past the end of the file");
  uint64_t at = note.offset;
  const uint64_t end = note.offset + note.filesz;
  while (end - at >= 12) {
    uint32_t namesz = *file.Read<uint32_t>(at);
    uint32_t descsz = *file.Read<uint32_t>(at + 4);
    uint32_t type = *file.Read<uint32_t>(at + 8);
    uint64_t name_at = at + 12;
    uint64_t desc_at = name_at + Align4(namesz);
    uint64_t next = desc_at + Align4(descsz);
    if (next > end) return Refuse("a note's name or description runs past its note segment");
    auto name = file.Bytes(name_at, namesz);
    bool xen = namesz == 4 && std::memcmp(name.data(), "Xen", 4) == 0;
    if (xen && type == XEN_ELFNOTE_PHYS32_ENTRY) {
      if (descsz == 4) return std::optional<uint32_t>(*file.Read<uint32_t>(desc_at));
      if (descsz == 8) {
        uint64_t value = *file.Read<uint64_t>(desc_at);
        if (value >> 32) return Refuse(absl::StrFormat("PVH entry %#x is above 4 GiB", value));
        return std::optional<uint32_t>(static_cast<uint32_t>(value));
      }
      return Refuse(absl::StrFormat("PVH entry note has a %u-byte value (4 or 8 expected)", descsz));
    }
    at = next;
  }
  return std::optional<uint32_t>();
}

}  // namespace

absl::StatusOr<LoadedKernel> LoadPvhKernel(std::span<const uint8_t> bytes, const memory::GuestMemory& memory,
                                           std::span<const ReservedRange> reserved) {
  FileView file(bytes);
  XENKVM_ASSIGN_OR_RETURN(Header header, ReadHeader(file));
  std::vector<Segment> segments = ProgramHeaders(file, header);

  std::optional<uint32_t> entry;
  for (const Segment& segment : segments) {
    if (segment.type != PT_NOTE || entry) continue;
    XENKVM_ASSIGN_OR_RETURN(entry, FindPvhEntry(file, segment));
  }
  if (!entry) {
    for (const Segment& note : NoteSections(file, header)) {
      if (entry) break;
      XENKVM_ASSIGN_OR_RETURN(entry, FindPvhEntry(file, note));
    }
  }
  if (!entry) {
    return Refuse("no PVH entry point (ELF note \"Xen\" type XEN_ELFNOTE_PHYS32_ENTRY): build the kernel "
                  "with PVH support (Linux: CONFIG_PVH=y)");
  }

  std::vector<Segment> loads;
  for (const Segment& segment : segments) {
    if (segment.type != PT_LOAD || segment.memsz == 0) continue;
    if (segment.filesz > segment.memsz) {
      return Refuse(absl::StrFormat("segment at %#x has file size %#x above its memory size %#x",
                                    segment.paddr, segment.filesz, segment.memsz));
    }
    if (!file.Contains(segment.offset, segment.filesz)) {
      return Refuse(absl::StrFormat("segment at %#x: file bytes %#x+%#x extend past the end of the file",
                                    segment.paddr, segment.offset, segment.filesz));
    }
    if (segment.paddr + segment.memsz < segment.paddr) {
      return Refuse(absl::StrFormat("segment at %#x of size %#x wraps the address space", segment.paddr,
                                    segment.memsz));
    }
    const uint64_t end = segment.paddr + segment.memsz;
    if (!memory.IsValidRange(memory::GuestAddress(segment.paddr), segment.memsz)) {
      return Refuse(absl::StrFormat(
          "segment %#x..%#x lies outside guest RAM (%u MiB): give the VM more memory", segment.paddr,
          end - 1, memory.total_size() >> 20));
    }
    for (const ReservedRange& range : reserved) {
      if (segment.paddr < range.end && end > range.start) {
        return Refuse(absl::StrFormat("segment %#x..%#x overlaps %s (%#x..%#x)", segment.paddr, end - 1,
                                      range.what, range.start, range.end - 1));
      }
    }
    loads.push_back(segment);
  }
  if (loads.empty()) return Refuse("no loadable segments");
  std::sort(loads.begin(), loads.end(), [](const Segment& a, const Segment& b) { return a.paddr < b.paddr; });
  for (size_t i = 1; i < loads.size(); ++i) {
    if (loads[i].paddr < loads[i - 1].paddr + loads[i - 1].memsz) {
      return Refuse(absl::StrFormat("segments at %#x and %#x overlap", loads[i - 1].paddr, loads[i].paddr));
    }
  }
  LoadedKernel kernel{*entry, loads.front().paddr, 0, header.elf64};
  bool entry_loaded = false;
  for (const Segment& segment : loads) {
    kernel.end = std::max(kernel.end, segment.paddr + segment.memsz);
    entry_loaded |= *entry >= segment.paddr && *entry < segment.paddr + segment.memsz;
  }
  if (!entry_loaded) return Refuse(absl::StrFormat("PVH entry %#x is outside every loaded segment", *entry));

  for (const Segment& segment : loads) {
    memory::GuestAddress at(segment.paddr);
    if (segment.filesz > 0) {
      XENKVM_RETURN_IF_ERROR(memory.Write(at, file.Bytes(segment.offset, segment.filesz)));
    }
    if (segment.memsz > segment.filesz) {
      XENKVM_RETURN_IF_ERROR(memory.Zero(at.Unchecked(segment.filesz), segment.memsz - segment.filesz));
    }
  }
  return kernel;
}

absl::StatusOr<uint32_t> WriteStartInfo(const memory::GuestMemory& memory, const LoadedKernel& kernel,
                                        const std::string& cmdline, std::span<const BootModule> modules,
                                        uint64_t rsdp_address) {
  if (cmdline.size() + 1 > kCommandLineMax) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the kernel command line is %u bytes; at most %u fit", cmdline.size(), kCommandLineMax - 1));
  }
  if (cmdline.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("the kernel command line contains a NUL byte");
  }
  std::vector<E820Entry> map = BuildE820(memory);
  const uint64_t modlist_at = kBootInfoAddress + sizeof(hvm_start_info);
  const uint64_t memmap_at = modlist_at + modules.size() * sizeof(hvm_modlist_entry);
  if (memmap_at + map.size() * sizeof(hvm_memmap_table_entry) > kBootInfoAddress + kBootInfoSize) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u boot modules do not fit in the boot information page", modules.size()));
  }

  XENKVM_RETURN_IF_ERROR(memory.Zero(memory::GuestAddress(kBootInfoAddress), kBootInfoSize));
  XENKVM_RETURN_IF_ERROR(memory.Zero(memory::GuestAddress(kCommandLineAddress), kCommandLineMax));
  if (!cmdline.empty()) {
    XENKVM_RETURN_IF_ERROR(memory.Write(memory::GuestAddress(kCommandLineAddress),
                                        std::span(reinterpret_cast<const uint8_t*>(cmdline.data()), cmdline.size())));
  }

  // Modules: each module's bytes, then its command line, page-aligned above the kernel.
  uint64_t cursor = (kernel.end + kPageSize - 1) & ~(kPageSize - 1);
  for (size_t i = 0; i < modules.size(); ++i) {
    const BootModule& module = modules[i];
    const uint64_t data_at = cursor;
    const uint64_t cmdline_at = (data_at + module.data.size() + kPageSize - 1) & ~(kPageSize - 1);
    const uint64_t next = cmdline_at + ((module.cmdline.size() + 1 + kPageSize - 1) & ~(kPageSize - 1));
    if (!memory.IsValidRange(memory::GuestAddress(data_at), next - data_at)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "boot module %u (%u bytes) does not fit in guest RAM above the kernel: give the VM more memory", i,
          module.data.size()));
    }
    if (!module.data.empty()) XENKVM_RETURN_IF_ERROR(memory.Write(memory::GuestAddress(data_at), module.data));
    XENKVM_RETURN_IF_ERROR(memory.Zero(memory::GuestAddress(cmdline_at), next - cmdline_at));
    if (!module.cmdline.empty()) {
      XENKVM_RETURN_IF_ERROR(memory.Write(
          memory::GuestAddress(cmdline_at),
          std::span(reinterpret_cast<const uint8_t*>(module.cmdline.data()), module.cmdline.size())));
    }
    hvm_modlist_entry entry{};
    entry.paddr = data_at;
    entry.size = module.data.size();
    entry.cmdline_paddr = cmdline_at;
    XENKVM_RETURN_IF_ERROR(memory.WriteObject(memory::GuestAddress(modlist_at + i * sizeof(entry)), entry));
    cursor = next;
  }
  for (size_t i = 0; i < map.size(); ++i) {
    hvm_memmap_table_entry entry{};
    entry.addr = map[i].address;
    entry.size = map[i].size;
    entry.type = map[i].type;
    XENKVM_RETURN_IF_ERROR(memory.WriteObject(memory::GuestAddress(memmap_at + i * sizeof(entry)), entry));
  }
  hvm_start_info info{};
  info.magic = XEN_HVM_START_MAGIC_VALUE;
  info.version = 1;
  info.nr_modules = static_cast<uint32_t>(modules.size());
  info.modlist_paddr = modules.empty() ? 0 : modlist_at;
  info.cmdline_paddr = kCommandLineAddress;
  info.memmap_paddr = memmap_at;
  info.memmap_entries = static_cast<uint32_t>(map.size());
  info.rsdp_paddr = rsdp_address;
  XENKVM_RETURN_IF_ERROR(memory.WriteObject(memory::GuestAddress(kBootInfoAddress), info));
  return static_cast<uint32_t>(kBootInfoAddress);
}

}  // namespace xenkvm::loader
