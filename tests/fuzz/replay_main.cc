// Runs a fuzz target without libFuzzer (any compiler, every test run): each file named on the
// command line, then deterministic pseudo-random mutations of them (bit flips, byte sets, splices,
// truncations). A crash or a sanitizer report fails the test; libFuzzer builds
// (tests/fuzz/README.md) explore further.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

uint64_t state = 0x9e3779b97f4a7c15ull;
uint64_t Next() {
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

std::vector<uint8_t> Mutate(std::vector<uint8_t> input) {
  const int edits = 1 + Next() % 8;
  for (int i = 0; i < edits; ++i) {
    switch (Next() % 5) {
      case 0:
        if (!input.empty()) input[Next() % input.size()] ^= static_cast<uint8_t>(1 << (Next() % 8));
        break;
      case 1:
        if (!input.empty()) input[Next() % input.size()] = static_cast<uint8_t>(Next());
        break;
      case 2:
        if (!input.empty()) input.resize(Next() % input.size());
        break;
      case 3:
        for (int n = Next() % 16; n > 0; --n) input.push_back(static_cast<uint8_t>(Next()));
        break;
      case 4:
        // An interesting 32-bit value somewhere: 0, -1, a power of two, a page boundary.
        if (input.size() >= 4) {
          static const uint32_t kValues[] = {0, 0xffffffff, 0x80000000, 0x1000, 0xfff, 0x7fffffff, 1};
          uint32_t value = kValues[Next() % 7];
          size_t at = Next() % (input.size() - 3);
          for (int b = 0; b < 4; ++b) input[at + b] = static_cast<uint8_t>(value >> (8 * b));
        }
        break;
    }
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::vector<uint8_t>> seeds;
  int mutations = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--mutations=", 0) == 0) {
      mutations = std::atoi(arg.c_str() + 12);
      continue;
    }
    std::ifstream file(arg, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  }
  if (seeds.empty()) seeds.push_back(std::vector<uint8_t>(64, 0));
  size_t runs = 0;
  for (const auto& seed : seeds) {
    LLVMFuzzerTestOneInput(seed.data(), seed.size());
    ++runs;
  }
  for (int i = 0; i < mutations; ++i) {
    std::vector<uint8_t> input = Mutate(seeds[Next() % seeds.size()]);
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
  }
  std::printf("replayed %zu inputs\n", runs);
  return 0;
}
