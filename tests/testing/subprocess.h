// Tests that run xenkvm's programs as a user would: spawn, collect stdout and stderr, time out.
#ifndef XENKVM_TESTS_TESTING_SUBPROCESS_H_
#define XENKVM_TESTS_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace xenkvm::testing {

struct ProcessResult {
  int status = -1;  // the exit status, or -1 when killed (by a signal or the timeout)
  bool timed_out = false;
  std::string out, err;
};

// Runs `argv` (argv[0] is the program's path) to completion, killing it after `timeout`.
ProcessResult RunProcess(const std::vector<std::string>& argv, absl::Duration timeout = absl::Seconds(60));

// Starts `argv` in the background with stdout and stderr sent to `log_path`; returns the pid.
pid_t StartProcess(const std::vector<std::string>& argv, const std::string& log_path);

// The path of a data dependency (e.g. "vmm/xenkvm-vmm") in the test's runfiles.
std::string Runfile(const std::string& path);

}  // namespace xenkvm::testing

#endif  // XENKVM_TESTS_TESTING_SUBPROCESS_H_
