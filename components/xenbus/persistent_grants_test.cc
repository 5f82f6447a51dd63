#include "components/xenbus/persistent_grants.h"

#include <gtest/gtest.h>

namespace xenkvm::xenbus {
namespace {

xen::GrantTable::Mapping MappingOf(uint32_t ref) {
  xen::GrantTable::Mapping mapping;
  mapping.ref = ref;
  mapping.readonly = false;
  mapping.gfn = 0x1000 + ref;
  return mapping;
}

TEST(PersistentGrantsTest, FindsWhatWasKeptAndNothingElse) {
  PersistentGrants grants;
  EXPECT_EQ(grants.Find(0), nullptr);
  EXPECT_EQ(grants.Find(0xffffffffu), nullptr);  // beyond any piece: no index is built to look
  // References in one piece, in the next, and far apart (a table configured at 4096 frames).
  for (uint32_t ref : {8u, 9u, 511u, 512u, 2097151u}) grants.Add(MappingOf(ref));
  EXPECT_EQ(grants.size(), 5u);
  for (uint32_t ref : {8u, 9u, 511u, 512u, 2097151u}) {
    const xen::GrantTable::Mapping* found = grants.Find(ref);
    ASSERT_NE(found, nullptr) << ref;
    EXPECT_EQ(found->ref, ref);
    EXPECT_EQ(found->gfn, 0x1000u + ref);
  }
  for (uint32_t ref : {0u, 7u, 10u, 513u, 1024u, 2097150u, 2097152u, 0xffffffffu}) {
    EXPECT_EQ(grants.Find(ref), nullptr) << ref;
  }
  EXPECT_EQ(grants.mappings().size(), 5u);
}

}  // namespace
}  // namespace xenkvm::xenbus
