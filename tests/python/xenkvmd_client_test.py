#!/usr/bin/python3
"""xenkvmd from a second, independent client: Python with Debian's python3-grpcio, stubs generated
at test time by the system protoc and grpc_python_plugin. Also checks the standard health service
and server reflection, so that generic gRPC tools work against the daemon."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xenkvm_stubs import generate_stubs, runfile  # noqa: E402


class XenkvmdClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="xkpy-", dir="/tmp")  # short: Unix socket paths
        generate_stubs(cls.dir)
        global vm_pb2, vm_pb2_grpc, health_pb2, health_pb2_grpc, reflection_pb2, reflection_pb2_grpc
        from proto.xenkvm.v1 import vm_pb2, vm_pb2_grpc
        import health_pb2, health_pb2_grpc, reflection_pb2, reflection_pb2_grpc
        cls.socket = os.path.join(cls.dir, "d.sock")
        cls.log = open(os.path.join(cls.dir, "daemon.log"), "w")
        cls.daemon = subprocess.Popen([runfile("api/xenkvmd"), "--socket", cls.socket, "--state-dir",
                                       os.path.join(cls.dir, "state"), "--vmm", runfile("vmm/xenkvm-vmm")],
                                      stdout=cls.log, stderr=cls.log)
        for _ in range(100):
            if os.path.exists(cls.socket):
                break
            time.sleep(0.05)
        cls.channel = grpc.insecure_channel("unix:" + cls.socket)
        cls.vms = vm_pb2_grpc.VmServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.daemon.send_signal(signal.SIGTERM)
        cls.daemon.wait(timeout=30)
        cls.log.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_health_and_reflection(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)
        reflection = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = [service.name for response in responses
                 for service in response.list_services_response.service]
        self.assertIn("xenkvm.v1.VmService", names)

    def test_a_vm_from_python(self):
        config = vm_pb2.VmConfig(name="py1", memory_mib=32, accelerator="emu",
                                 kernel=runfile("tests/guests/xen_ticker.elf"))
        vm = self.vms.CreateVm(vm_pb2.CreateVmRequest(config=config, start=True), timeout=30)
        self.assertEqual(vm.state, vm_pb2.VM_STATE_RUNNING)
        self.assertEqual(vm.accelerator, "emu")
        self.assertGreater(vm.pid, 0)
        self.assertTrue(vm.xenstore_socket.endswith("/xs.sock"), vm.xenstore_socket)
        time.sleep(0.3)
        listed = self.vms.ListVms(vm_pb2.ListVmsRequest(), timeout=10)
        self.assertIn("py1", [v.config.name for v in listed.vms])
        channels = self.vms.ListEventChannels(vm_pb2.VmRef(name="py1"), timeout=10)
        timer = [p for p in channels.ports if p.type == "virq" and p.target == 0]
        self.assertEqual(len(timer), 1)
        self.assertGreater(timer[0].deliveries, 0)
        self.assertIn("event_channel_op", [h.name for h in channels.hypercalls])
        chunks = self.vms.StreamConsole(vm_pb2.StreamConsoleRequest(name="py1", replay=True, no_follow=True),
                                        timeout=10)
        text = b"".join(chunk.data for chunk in chunks).decode()
        self.assertIn("ticker: VIRQ_TIMER on port 3", text)  # 1, 2: XenStore, PV console
        vm = self.vms.DestroyVm(vm_pb2.VmRef(name="py1"), timeout=30)
        self.assertEqual(vm.state, vm_pb2.VM_STATE_SHUTDOWN)
        self.vms.DeleteVm(vm_pb2.VmRef(name="py1"), timeout=10)
        with self.assertRaises(grpc.RpcError) as error:
            self.vms.GetVm(vm_pb2.VmRef(name="py1"), timeout=10)
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_errors_name_what_is_wrong(self):
        bad = vm_pb2.VmConfig(name="py2", vcpus=99, kernel="/k")
        with self.assertRaises(grpc.RpcError) as error:
            self.vms.CreateVm(vm_pb2.CreateVmRequest(config=bad), timeout=10)
        self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("vcpus: 99", error.exception.details())
        with self.assertRaises(grpc.RpcError) as error:
            self.vms.PauseVm(vm_pb2.VmRef(name="nope"), timeout=10)
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_events_stream(self):
        seen = []

        def watch():
            for event in self.vms.WatchEvents(vm_pb2.WatchEventsRequest(name="py3"), timeout=30):
                seen.append(event.kind)
                if event.kind == vm_pb2.VmEvent.DELETED:
                    return

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.3)
        config = vm_pb2.VmConfig(name="py3", memory_mib=32, accelerator="emu", cmdline="ticks=5",
                                 kernel=runfile("tests/guests/xen_ticker.elf"))
        self.vms.CreateVm(vm_pb2.CreateVmRequest(config=config, start=True), timeout=30)
        for _ in range(100):
            if self.vms.GetVm(vm_pb2.VmRef(name="py3"), timeout=10).state == vm_pb2.VM_STATE_SHUTDOWN:
                break
            time.sleep(0.05)
        self.vms.DeleteVm(vm_pb2.VmRef(name="py3"), timeout=10)
        watcher.join(timeout=30)
        self.assertEqual(seen, [vm_pb2.VmEvent.CREATED, vm_pb2.VmEvent.STARTED, vm_pb2.VmEvent.SHUT_DOWN,
                                vm_pb2.VmEvent.DELETED])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"python-client: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
