"""Python stubs for xenkvm's API, generated on the spot by the system protoc and grpc_python_plugin
(Debian ships no xenkvm package): shared by the client test and the API benchmark."""
import os
import shutil
import subprocess
import sys

# Under Bazel, the runfiles root; run from the source tree, the repository root.
RUNFILES = (os.path.join(os.environ["TEST_SRCDIR"], "xenkvm") if "TEST_SRCDIR" in os.environ
            else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def runfile(path):
    return os.path.join(RUNFILES, path)


def generate_stubs(out_dir):
    """Writes vm_pb2(_grpc) (as proto.xenkvm.v1), health_pb2(_grpc) and reflection_pb2(_grpc) to
    out_dir and puts it on sys.path."""
    plugin = "--plugin=protoc-gen-grpc=" + shutil.which("grpc_python_plugin")
    subprocess.run(["protoc", "-I", RUNFILES, "--python_out", out_dir, "--grpc_out", out_dir, plugin,
                    "proto/xenkvm/v1/vm.proto"], check=True)
    subprocess.run(["protoc", "-I", runfile("tests/python/protos"), "--python_out", out_dir, "--grpc_out", out_dir,
                    plugin, "health.proto", "reflection.proto"], check=True)
    sys.path.insert(0, out_dir)
