#!/usr/bin/env bash
# README command (a): installs what is missing, builds everything, and runs the main job.
# Today no guest can boot yet (the accelerators and the loader are the next issues), so the main job
# reports what this host offers xenkvm; when the first guest boots, this boots the demo guest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
bazel build //...
bazel run //tools:xenkvm-info
