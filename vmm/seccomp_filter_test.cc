// The filter in a child process: what the VMM does after its start is allowed; anything else
// (here mount(2) and a new outward socket) kills the process with SIGSYS.
#include "vmm/seccomp_filter.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xenkvm::vmm {
namespace {

// Runs `body` in a child that first installs the filter; returns its wait status.
int RunFiltered(const std::function<int()>& body) {
  const pid_t child = fork();
  if (child == 0) {
    if (!InstallSeccompFilter().ok()) _exit(100);
    _exit(body());
  }
  int status = 0;
  waitpid(child, &status, 0);
  return status;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

TEST(SeccompFilterTest, SanitizedBuildsRunUnfiltered) {
  if (!kSanitized) GTEST_SKIP() << "not a sanitizer build: the filter is installed (the tests below)";
  EXPECT_EQ(InstallSeccompFilter().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SeccompFilterTest, WhatTheVmmDoesIsAllowed) {
  if (kSanitized) GTEST_SKIP() << "sanitizer builds run without the filter (their runtime needs more calls)";
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/allowed";
  int status = RunFiltered([&] {
    int fd = open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || pwrite(fd, "x", 1, 0) != 1 || fdatasync(fd) != 0) return 1;
    struct flock lock {};
    lock.l_type = F_WRLCK;
    lock.l_start = 0x7e;
    lock.l_len = 1;
    if (fcntl(fd, F_OFD_SETLK, &lock) != 0) return 2;
    close(fd);
    std::thread worker([] {});  // hot-plug starts threads
    worker.join();
    int interfaces = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // a hot-plugged vif's tap brought up
    if (interfaces < 0) return 3;
    close(interfaces);
    return 0;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SeccompFilterTest, AnythingElseKillsTheProcess) {
  if (kSanitized) GTEST_SKIP() << "sanitizer builds run without the filter (their runtime needs more calls)";
  int mounted = RunFiltered([] { return mount("none", "/tmp", "tmpfs", 0, nullptr) == 0 ? 0 : 1; });
  ASSERT_TRUE(WIFSIGNALED(mounted));
  EXPECT_EQ(WTERMSIG(mounted), SIGSYS);
  int connected = RunFiltered([] { return socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1; });
  ASSERT_TRUE(WIFSIGNALED(connected));
  EXPECT_EQ(WTERMSIG(connected), SIGSYS);
}

}  // namespace
}  // namespace xenkvm::vmm
