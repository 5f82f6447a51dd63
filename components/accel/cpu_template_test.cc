#include "components/accel/cpu_template.h"

#include "gtest/gtest.h"

namespace xenkvm::accel {
namespace {

TEST(CpuTemplateTest, NamesRoundTripAndUnknownOnesAreRefused) {
  for (CpuTemplate t : {CpuTemplate::kHost, CpuTemplate::kX86_64V1, CpuTemplate::kX86_64V2, CpuTemplate::kX86_64V3}) {
    EXPECT_EQ(*ParseCpuTemplate(CpuTemplateName(t)), t);
  }
  EXPECT_EQ(*ParseCpuTemplate(""), CpuTemplate::kHost);
  EXPECT_EQ(std::string(ParseCpuTemplate("skylake").status().message()),
            "cpu template \"skylake\" is unknown: use host, x86-64-v1, x86-64-v2 or x86-64-v3");
}

TEST(CpuTemplateTest, LevelsKeepTheirExtensionsAndNothingElseIsTouched) {
  const CpuidRegisters all{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff};
  auto apply = [&](CpuTemplate t, uint32_t function, uint32_t index = 0) {
    CpuidRegisters r = all;
    ApplyCpuTemplate(t, function, index, r);
    return r;
  };
  EXPECT_EQ(apply(CpuTemplate::kHost, 1).ecx, 0xffffffffu);
  const CpuidRegisters v1 = apply(CpuTemplate::kX86_64V1, 1);
  EXPECT_EQ(v1.edx, 0xffffffffu);  // the baseline's x87, SSE, SSE2... and APIC, TSC stay
  EXPECT_EQ(v1.ecx & 1, 0u);       // SSE3
  EXPECT_NE(v1.ecx & (1u << 31), 0u);  // hypervisor
  EXPECT_NE(v1.ecx & (1u << 21), 0u);  // x2APIC: not an ISA level's business (the backend decides)
  const CpuidRegisters v2 = apply(CpuTemplate::kX86_64V2, 1);
  for (int bit : {0, 9, 13, 19, 20, 23}) EXPECT_NE(v2.ecx & (1u << bit), 0u) << bit;
  for (int bit : {12, 22, 26, 27, 28, 29}) EXPECT_EQ(v2.ecx & (1u << bit), 0u) << bit;
  const CpuidRegisters v3 = apply(CpuTemplate::kX86_64V3, 1);
  for (int bit : {12, 22, 26, 27, 28, 29}) EXPECT_NE(v3.ecx & (1u << bit), 0u) << bit;
  EXPECT_EQ(v3.ecx & (1u << 25), 0u);  // AES is in no level
  const CpuidRegisters leaf7 = apply(CpuTemplate::kX86_64V3, 7);
  EXPECT_EQ(leaf7.ebx & ((1u << 3) | (1u << 5) | (1u << 8)), (1u << 3) | (1u << 5) | (1u << 8));  // BMI1 AVX2 BMI2
  EXPECT_EQ(leaf7.ebx & (1u << 16), 0u);  // AVX-512F
  EXPECT_NE(leaf7.edx & (1u << 14), 0u);  // SERIALIZE: not managed
  EXPECT_EQ(apply(CpuTemplate::kX86_64V2, 7).ebx & (1u << 5), 0u);
  EXPECT_EQ(apply(CpuTemplate::kX86_64V3, 7, 1).ebx, 0xffffffffu);  // other sub-leaves untouched
  EXPECT_EQ(apply(CpuTemplate::kX86_64V1, 0x80000001).ecx & 1, 0u);  // LAHF/SAHF: v2
  EXPECT_EQ(apply(CpuTemplate::kX86_64V2, 0x80000001).ecx & 0x21, 1u);  // LZCNT: v3
  EXPECT_EQ(apply(CpuTemplate::kX86_64V1, 0x80000001).edx, 0xffffffffu);  // SYSCALL, NX, LM
}

}  // namespace
}  // namespace xenkvm::accel
