#!/usr/bin/env bash
# Runs a Python test with Debian's interpreter, which has python3-grpcio and python3-protobuf.
set -euo pipefail
cd "${TEST_SRCDIR}/xenkvm"
exec /usr/bin/python3 "$1"
