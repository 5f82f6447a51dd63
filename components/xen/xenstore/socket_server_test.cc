// External access through Debian's xenstore-utils, the real clients xenstored users have.
#include "components/xen/xenstore/socket_server.h"

#include <unistd.h>

#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "components/base/event_loop.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/subprocess.h"

namespace xenkvm::xen::xenstore {
namespace {

using ::testing::HasSubstr;

class SocketServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* tool : {"/usr/bin/xenstore-read", "/usr/bin/xenstore-write", "/usr/bin/xenstore-ls"}) {
      if (access(tool, X_OK) != 0) GTEST_SKIP() << tool << " is missing: tools/setup.sh installs xenstore-utils";
    }
    // Under /tmp: Bazel's TEST_TMPDIR is too long for a socket address.
    char directory[] = "/tmp/xenstore-test-XXXXXX";
    ASSERT_NE(mkdtemp(directory), nullptr);
    directory_ = directory;
    path_ = directory_ + "/xenstore.sock";
    loop_ = *base::EventLoop::Create();
    absl::StatusOr<std::unique_ptr<SocketServer>> server = SocketServer::Start(store_, *loop_, path_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_TRUE(loop_->Start().ok());
  }
  void TearDown() override {
    if (loop_) {
      loop_->Stop();
      loop_->Join();
    }
    server_.reset();
    if (!directory_.empty()) testing::RunProcess({"/bin/rm", "-rf", directory_});
  }
  testing::ProcessResult Tool(const std::string& tool, std::vector<std::string> arguments) {
    std::vector<std::string> argv = {"/usr/bin/env", absl::StrCat("XENSTORED_PATH=", path_), "/usr/bin/" + tool};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    return testing::RunProcess(argv, absl::Seconds(20));
  }
  // Runs `work` on the loop thread (the store's owner) and waits for it.
  template <typename F>
  auto OnLoop(F work) {
    std::promise<decltype(work())> done;
    EXPECT_TRUE(loop_->Post([&] { done.set_value(work()); }).ok());
    return done.get_future().get();
  }

  Store store_;
  std::string directory_;
  std::string path_;
  std::unique_ptr<base::EventLoop> loop_;
  std::unique_ptr<SocketServer> server_;
};

TEST_F(SocketServerTest, XenstoreUtilsReadWriteListAndRemove) {
  testing::ProcessResult written = Tool("xenstore-write", {"/vm/name", "guest", "/vm/memory", "256"});
  ASSERT_EQ(written.status, 0) << written.err;
  EXPECT_EQ(OnLoop([&] {
              Store::ClientId client = store_.Connect(0, true, nullptr);
              std::string value = store_.Read(client, 0, "/vm/name").value();
              store_.Disconnect(client);
              return value;
            }),
            "guest");
  testing::ProcessResult read = Tool("xenstore-read", {"/vm/memory"});
  ASSERT_EQ(read.status, 0) << read.err;
  EXPECT_EQ(read.out, "256\n");
  testing::ProcessResult listed = Tool("xenstore-ls", {"/vm"});
  ASSERT_EQ(listed.status, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr("name = \"guest\""));
  EXPECT_THAT(listed.out, HasSubstr("memory = \"256\""));
  testing::ProcessResult list = Tool("xenstore-list", {"/vm"});  // uses a transaction
  ASSERT_EQ(list.status, 0) << list.err;
  EXPECT_EQ(list.out, "memory\nname\n");
  ASSERT_EQ(Tool("xenstore-chmod", {"/vm/name", "n1", "r2"}).status, 0);
  testing::ProcessResult permissions = Tool("xenstore-ls", {"-p", "/vm"});
  EXPECT_THAT(permissions.out, HasSubstr("(n1,r2)"));
  ASSERT_EQ(Tool("xenstore-rm", {"/vm/name"}).status, 0);
  testing::ProcessResult gone = Tool("xenstore-read", {"/vm/name"});
  EXPECT_NE(gone.status, 0);
  EXPECT_EQ(Tool("xenstore-exists", {"/vm/memory"}).status, 0);
  EXPECT_NE(Tool("xenstore-exists", {"/vm/name"}).status, 0);
  EXPECT_EQ(OnLoop([&] { return server_->clients(); }), 0u);  // every client closed and was dropped
}

TEST_F(SocketServerTest, XenstoreWatchSeesAnotherClientsWrite) {
  std::string log = directory_ + "/watch.log";
  pid_t watcher = testing::StartProcess(
      {"/usr/bin/env", absl::StrCat("XENSTORED_PATH=", path_), "/usr/bin/xenstore-watch", "-n", "2", "/watched"}, log);
  // The first event is the registration's; wait for it before writing.
  std::string seen;
  for (int i = 0; i < 200 && seen.find("/watched") == std::string::npos; ++i) {
    usleep(20000);
    seen = testing::RunProcess({"/bin/cat", log}).out;
  }
  ASSERT_THAT(seen, HasSubstr("/watched"));
  ASSERT_EQ(Tool("xenstore-write", {"/watched/child", "1"}).status, 0);
  int status = -1;
  for (int i = 0; i < 500; ++i) {
    if (waitpid(watcher, &status, WNOHANG) == watcher) break;
    usleep(20000);
  }
  ASSERT_TRUE(WIFEXITED(status)) << "xenstore-watch did not see its second event";
  EXPECT_THAT(testing::RunProcess({"/bin/cat", log}).out, HasSubstr("/watched/child"));
}

TEST_F(SocketServerTest, RefusesAnUnusablePath) {
  Store store;
  EXPECT_FALSE(SocketServer::Start(store, *loop_, "").ok());
  EXPECT_FALSE(SocketServer::Start(store, *loop_, std::string(200, 'x')).ok());
  EXPECT_FALSE(SocketServer::Start(store, *loop_, "/nonexistent-directory/xs.sock").ok());
}

}  // namespace
}  // namespace xenkvm::xen::xenstore
