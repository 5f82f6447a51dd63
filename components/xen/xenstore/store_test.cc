#include "components/xen/xenstore/store.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::xen::xenstore {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Event = std::pair<std::string, std::string>;

class StoreTest : public ::testing::Test {
 protected:
  explicit StoreTest(Limits limits = {}) : store_(limits) {
    dom0_ = store_.Connect(0, true, [this](std::string_view path, std::string_view token) {
      dom0_events_.emplace_back(path, token);
    });
    guest_ = store_.Connect(1, false, [this](std::string_view path, std::string_view token) {
      guest_events_.emplace_back(path, token);
    });
    // The guest's home, as the toolstack makes it: owned by dom0, readable by the guest; data/ its own.
    EXPECT_TRUE(store_.Write(dom0_, 0, "/local/domain/1", "").ok());
    EXPECT_TRUE(store_.SetPermissions(dom0_, 0, "/local/domain/1", {{0, Access::kNone}, {1, Access::kRead}}).ok());
    EXPECT_TRUE(store_.Write(dom0_, 0, "/local/domain/1/data", "").ok());
    EXPECT_TRUE(store_.SetPermissions(dom0_, 0, "/local/domain/1/data", {{1, Access::kNone}}).ok());
    dom0_events_.clear();
  }

  Error ErrorOf(const Status& status) {
    EXPECT_FALSE(status.ok());
    return status.ok() ? Error::kEIO : status.error();
  }

  Store store_;
  Store::ClientId dom0_;
  Store::ClientId guest_;
  std::vector<Event> dom0_events_;
  std::vector<Event> guest_events_;
};

TEST_F(StoreTest, WritesReadsAndListsWithImpliedParents) {
  ASSERT_TRUE(store_.Write(dom0_, 0, "/a/b/c", "value").ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/a/b/c").value(), "value");
  EXPECT_EQ(store_.Read(dom0_, 0, "/a/b").value(), "");
  EXPECT_THAT(store_.Directory(dom0_, 0, "/a").value(), ElementsAre("b"));
  ASSERT_TRUE(store_.Write(dom0_, 0, "/a/b/d", "").ok());
  EXPECT_THAT(store_.Directory(dom0_, 0, "/a/b").value(), ElementsAre("c", "d"));
  EXPECT_EQ(store_.Read(dom0_, 0, "/a/missing").error(), Error::kENOENT);
  EXPECT_TRUE(store_.Mkdir(dom0_, 0, "/a/b").ok());  // existing: fine, untouched
  EXPECT_EQ(store_.Read(dom0_, 0, "/a/b/c").value(), "value");
}

TEST_F(StoreTest, RelativePathsLiveUnderTheDomainsHome) {
  ASSERT_TRUE(store_.Write(guest_, 0, "data/x", "1").ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/local/domain/1/data/x").value(), "1");
  EXPECT_EQ(store_.Read(guest_, 0, "/local/domain/1/data/x").value(), "1");
  // The guest owns what it creates.
  EXPECT_THAT(store_.GetPermissions(dom0_, 0, "/local/domain/1/data/x").value(),
              ElementsAre(Permission{1, Access::kNone}));
}

TEST_F(StoreTest, RemoveTakesTheSubtreeAndToleratesAMissingLeaf) {
  ASSERT_TRUE(store_.Write(dom0_, 0, "/a/b/c", "").ok());
  ASSERT_TRUE(store_.Remove(dom0_, 0, "/a/b").ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/a/b/c").error(), Error::kENOENT);
  EXPECT_THAT(store_.Directory(dom0_, 0, "/a").value(), IsEmpty());
  EXPECT_TRUE(store_.Remove(dom0_, 0, "/a/b").ok());                          // parent exists
  EXPECT_EQ(ErrorOf(store_.Remove(dom0_, 0, "/a/b/c")), Error::kENOENT);     // parent gone too
}

TEST_F(StoreTest, GuestsMeetPermissions) {
  ASSERT_TRUE(store_.Write(dom0_, 0, "/secret", "x").ok());
  EXPECT_EQ(store_.Read(guest_, 0, "/secret").error(), Error::kEACCES);
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "/secret", "y")), Error::kEACCES);
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "/new", "y")), Error::kEACCES);  // the root is dom0's
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "name", "y")), Error::kEACCES);  // home is read-only
  EXPECT_EQ(store_.Read(guest_, 0, "").error(), Error::kEINVAL);
  // XSA-353: a guest cannot remove the root; dom0 may not either.
  EXPECT_EQ(ErrorOf(store_.Remove(guest_, 0, "/")), Error::kEACCES);
  EXPECT_EQ(ErrorOf(store_.Remove(dom0_, 0, "/")), Error::kEINVAL);
}

TEST_F(StoreTest, OnlyDomainZeroGivesNodesAway) {
  ASSERT_TRUE(store_.Write(guest_, 0, "data/mine", "").ok());
  EXPECT_TRUE(store_.SetPermissions(guest_, 0, "data/mine", {{1, Access::kRead}, {2, Access::kBoth}}).ok());
  EXPECT_EQ(ErrorOf(store_.SetPermissions(guest_, 0, "data/mine", {{2, Access::kBoth}})), Error::kEPERM);  // XSA-352
  EXPECT_EQ(ErrorOf(store_.SetPermissions(guest_, 0, "/local/domain/1", {{1, Access::kBoth}})), Error::kEACCES);
  EXPECT_EQ(ErrorOf(store_.SetPermissions(guest_, 0, "data/mine", {})), Error::kEINVAL);
  EXPECT_TRUE(store_.SetPermissions(dom0_, 0, "/local/domain/1/data/mine", {{2, Access::kNone}}).ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "data/mine").error(), Error::kENOENT);  // dom0's relative paths are its own
}

TEST_F(StoreTest, RefusesMalformedPaths) {
  for (const char* path : {"/local/domain/", "/a//b", "/a b", "/a\\b", "data/x/", "/a/\xff"}) {
    EXPECT_EQ(ErrorOf(store_.Write(dom0_, 0, path, "")), Error::kEINVAL) << path;
  }
  // XSA-323: relative paths longer than 2048, absolute longer than 3072.
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, std::string(2049, 'a'), "")), Error::kEINVAL);
  EXPECT_EQ(ErrorOf(store_.Write(dom0_, 0, "/" + std::string(3072, 'a'), "")), Error::kEINVAL);
}

TEST_F(StoreTest, WatchesFireForTheNodeAndItsDescendants) {
  ASSERT_TRUE(store_.Watch(dom0_, "/w", "tok").ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/w/a", "1").ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/wx", "1").ok());  // a sibling with the same prefix: no event
  EXPECT_THAT(dom0_events_, ElementsAre(Event{"/w/a", "tok"}));
  EXPECT_EQ(ErrorOf(store_.Watch(dom0_, "/w", "tok")), Error::kEEXIST);
  ASSERT_TRUE(store_.Unwatch(dom0_, "/w", "tok").ok());
  EXPECT_EQ(ErrorOf(store_.Unwatch(dom0_, "/w", "tok")), Error::kENOENT);
}

TEST_F(StoreTest, RelativeWatchesReportRelativePaths) {
  ASSERT_TRUE(store_.Watch(guest_, "data", "t").ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/local/domain/1/data/k", "v").ok());
  EXPECT_THAT(guest_events_, ElementsAre(Event{"data/k", "t"}));
}

TEST_F(StoreTest, RemovingAnAncestorFiresWatchesBelowIt) {
  ASSERT_TRUE(store_.Write(dom0_, 0, "/local/domain/1/data/deep/node", "").ok());
  ASSERT_TRUE(store_.Watch(guest_, "data/deep/node", "below").ok());
  ASSERT_TRUE(store_.Remove(dom0_, 0, "/local/domain/1/data").ok());
  EXPECT_THAT(guest_events_, ElementsAre(Event{"data/deep/node", "below"}));
}

TEST_F(StoreTest, NoEventsForNodesTheWatcherCannotRead) {  // XSA-115
  ASSERT_TRUE(store_.Watch(guest_, "/", "all").ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/private", "x").ok());
  EXPECT_THAT(guest_events_, IsEmpty());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/local/domain/1/data/shared", "x").ok());
  EXPECT_THAT(guest_events_, ElementsAre(Event{"/local/domain/1/data/shared", "all"}));
}

TEST_F(StoreTest, DomainWatchesArePrivileged) {
  EXPECT_EQ(ErrorOf(store_.Watch(guest_, "@releaseDomain", "t")), Error::kEACCES);
  EXPECT_EQ(ErrorOf(store_.Watch(dom0_, "@other", "t")), Error::kEINVAL);
  ASSERT_TRUE(store_.Watch(dom0_, "@introduceDomain", "in").ok());
  ASSERT_TRUE(store_.Watch(dom0_, "@releaseDomain", "out").ok());
  store_.IntroduceDomain(1);
  EXPECT_TRUE(store_.IsDomainIntroduced(1));
  store_.ReleaseDomain(1);
  EXPECT_FALSE(store_.IsDomainIntroduced(1));
  EXPECT_THAT(dom0_events_, ElementsAre(Event{"@introduceDomain", "in"}, Event{"@releaseDomain", "out"}));
}

TEST_F(StoreTest, ReleasedDomainLeavesNothingForItsSuccessor) {  // XSA-322, XSA-419
  ASSERT_TRUE(store_.Write(dom0_, 0, "/tool/shared", "").ok());
  ASSERT_TRUE(store_.SetPermissions(dom0_, 0, "/tool/shared", {{1, Access::kNone}, {2, Access::kRead}}).ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/tool/granted", "").ok());
  ASSERT_TRUE(store_.SetPermissions(dom0_, 0, "/tool/granted", {{0, Access::kNone}, {1, Access::kBoth}}).ok());
  store_.ReleaseDomain(1);
  EXPECT_EQ(store_.Read(dom0_, 0, "/local/domain/1").error(), Error::kENOENT);
  EXPECT_THAT(store_.GetPermissions(dom0_, 0, "/tool/shared").value(),
              ElementsAre(Permission{0, Access::kNone}, Permission{2, Access::kRead}));
  EXPECT_THAT(store_.GetPermissions(dom0_, 0, "/tool/granted").value(), ElementsAre(Permission{0, Access::kNone}));
  EXPECT_EQ(store_.Read(guest_, 0, "/tool/granted").error(), Error::kEACCES);
}

TEST_F(StoreTest, TransactionsAreIsolatedUntilCommit) {
  ASSERT_TRUE(store_.Watch(dom0_, "/t", "w").ok());
  Result<uint32_t> tx = store_.TransactionStart(dom0_);
  ASSERT_TRUE(tx.ok());
  ASSERT_TRUE(store_.Write(dom0_, tx.value(), "/t/a", "1").ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/t/a").error(), Error::kENOENT);
  EXPECT_EQ(store_.Read(dom0_, tx.value(), "/t/a").value(), "1");
  EXPECT_THAT(dom0_events_, IsEmpty());  // events wait for the commit
  ASSERT_TRUE(store_.TransactionEnd(dom0_, tx.value(), true).ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/t/a").value(), "1");
  EXPECT_THAT(dom0_events_, ElementsAre(Event{"/t/a", "w"}));
  EXPECT_EQ(ErrorOf(store_.TransactionEnd(dom0_, tx.value(), true)), Error::kENOENT);
  EXPECT_EQ(store_.Read(dom0_, 12345, "/t/a").error(), Error::kENOENT);
}

TEST_F(StoreTest, ConflictingCommitGetsEagainAndChangesNothing) {
  ASSERT_TRUE(store_.Write(dom0_, 0, "/c", "0").ok());
  uint32_t tx = store_.TransactionStart(guest_).value();
  uint32_t other = store_.TransactionStart(dom0_).value();
  EXPECT_EQ(store_.Read(dom0_, other, "/c").value(), "0");
  ASSERT_TRUE(store_.Write(dom0_, other, "/c", "1").ok());
  ASSERT_TRUE(store_.Write(guest_, tx, "data/n", "x").ok());
  ASSERT_TRUE(store_.Write(dom0_, 0, "/c", "2").ok());  // under `other`'s feet
  EXPECT_EQ(ErrorOf(store_.TransactionEnd(dom0_, other, true)), Error::kEAGAIN);
  EXPECT_EQ(store_.Read(dom0_, 0, "/c").value(), "2");
  EXPECT_TRUE(store_.TransactionEnd(guest_, tx, true).ok());  // touched nothing that changed
  // Aborted: nothing lands.
  uint32_t aborted = store_.TransactionStart(guest_).value();
  ASSERT_TRUE(store_.Write(guest_, aborted, "data/gone", "x").ok());
  ASSERT_TRUE(store_.TransactionEnd(guest_, aborted, false).ok());
  EXPECT_EQ(store_.Read(guest_, 0, "data/gone").error(), Error::kENOENT);
  // Another client cannot use or end someone else's transaction.
  uint32_t theirs = store_.TransactionStart(dom0_).value();
  EXPECT_EQ(store_.Read(guest_, theirs, "data").error(), Error::kENOENT);
  EXPECT_EQ(ErrorOf(store_.TransactionEnd(guest_, theirs, true)), Error::kENOENT);
}

TEST_F(StoreTest, ResetWatchesDropsWatchesAndTransactions) {  // XSA-330, XSA-484
  ASSERT_TRUE(store_.Watch(guest_, "data", "t").ok());
  uint32_t tx = store_.TransactionStart(guest_).value();
  for (int i = 0; i < 1000; ++i) store_.ResetWatches(guest_);
  EXPECT_EQ(store_.Statistics().watches, 0u);
  EXPECT_EQ(store_.Read(guest_, tx, "data").error(), Error::kENOENT);
  EXPECT_TRUE(store_.Watch(guest_, "data", "t").ok());
}

TEST_F(StoreTest, ADeepTreeIsRemovedWithoutRecursion) {  // XSA-418
  std::string path = "/deep";
  for (int i = 0; i < 1000; ++i) path += "/a";
  ASSERT_TRUE(store_.Write(dom0_, 0, path, "bottom").ok());
  ASSERT_TRUE(store_.Remove(dom0_, 0, "/deep").ok());
  EXPECT_EQ(store_.Read(dom0_, 0, "/deep/a").error(), Error::kENOENT);
}

TEST(PermissionTest, ParsesAndFormatsXenstoredsLetters) {
  EXPECT_EQ(ParsePermission("r5"), (Permission{5, Access::kRead}));
  EXPECT_EQ(ParsePermission("b0"), (Permission{0, Access::kBoth}));
  for (const char* bad : {"", "r", "x1", "r-1", "r65536", "r1a", "r123456"}) {
    EXPECT_EQ(ParsePermission(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(FormatPermission({7, Access::kWrite}), "w7");
}

class StoreQuotaTest : public StoreTest {
 protected:
  StoreQuotaTest() : StoreTest(Limits{20, 16, 3, 2, 3, 30}) {}
};

TEST_F(StoreQuotaTest, GuestsMeetEveryQuotaAndDomainZeroNone) {
  // Nodes per domain (the guest owns data/ already: 1 node).
  for (int i = 0; i < 19; ++i) ASSERT_TRUE(store_.Write(guest_, 0, absl::StrCat("data/n", i), "").ok()) << i;
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "data/one-too-many", "")), Error::kENOSPC);
  ASSERT_TRUE(store_.Remove(guest_, 0, "data/n0").ok());
  EXPECT_TRUE(store_.Write(guest_, 0, "data/again", "").ok());
  // Node size.
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "data/n1", std::string(17, 'x'))), Error::kENOSPC);
  EXPECT_TRUE(store_.Write(dom0_, 0, "/big", std::string(100, 'x')).ok());
  // Watches.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_.Watch(guest_, "data", absl::StrCat(i)).ok());
  EXPECT_EQ(ErrorOf(store_.Watch(guest_, "data", "3")), Error::kE2BIG);
  // Transactions.
  ASSERT_TRUE(store_.TransactionStart(guest_).ok());
  ASSERT_TRUE(store_.TransactionStart(guest_).ok());
  EXPECT_EQ(store_.TransactionStart(guest_).error(), Error::kENOSPC);
  // Permissions per node.
  EXPECT_EQ(ErrorOf(store_.SetPermissions(guest_, 0, "data/n1",
                                          {{1, Access::kNone}, {2, Access::kRead}, {3, Access::kRead}, {4, Access::kRead}})),
            Error::kENOSPC);
}

TEST_F(StoreQuotaTest, CreateAndRemoveInATransactionKeepTheCountRight) {  // XSA-421
  for (int round = 0; round < 50; ++round) {
    uint32_t tx = store_.TransactionStart(guest_).value();
    ASSERT_TRUE(store_.Write(guest_, tx, "data/tmp/a", "").ok()) << round;
    ASSERT_TRUE(store_.Remove(guest_, tx, "data/tmp").ok());
    ASSERT_TRUE(store_.TransactionEnd(guest_, tx, true).ok());
  }
  for (int i = 0; i < 19; ++i) EXPECT_TRUE(store_.Write(guest_, 0, absl::StrCat("data/n", i), "").ok()) << i;
  EXPECT_EQ(ErrorOf(store_.Write(guest_, 0, "data/full", "")), Error::kENOSPC);
}

TEST_F(StoreQuotaTest, ATransactionTouchesABoundedNumberOfNodes) {
  uint32_t tx = store_.TransactionStart(guest_).value();
  Status last = Ok{};
  for (int i = 0; i < 40 && last.ok(); ++i) {
    Result<std::string> read = store_.Read(guest_, tx, absl::StrCat("data/none", i));
    if (!read.ok() && read.error() != Error::kENOENT) last = read.error();
  }
  EXPECT_EQ(ErrorOf(last), Error::kENOSPC);
}

}  // namespace
}  // namespace xenkvm::xen::xenstore
