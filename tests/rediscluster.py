"""A real Redis Cluster of the tests' own: three masters and three replicas, each a
`redis-server --cluster-enabled yes` on a loopback port, joined by `redis-cli --cluster
create`; and what the fault tests do to it (kill a master, migrate a slot, stop it all)."""
from __future__ import annotations

import atexit
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

CLUSTER_HELP = "redis-server and redis-cli are needed for the Redis Cluster tests: apt-get install redis-server"
NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        port = random.randint(20000, 29999)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterNodes:
    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if self.binary is None or cli is None:
            raise RuntimeError(CLUSTER_HELP)
        self.workdir = workdir
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            if (port := free_cluster_port()) not in self.ports and port + 10000 not in self.ports:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        atexit.register(self.stop)  # a test run cut short leaves no redis-server behind
        try:
            for port in self.ports:
                self.start_node(port)
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas),
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self.wait_ok()
            self.wait_replicated(masters, replicas)
        except BaseException:
            self.stop()
            raise

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start_node(self, port: int) -> None:
        """Start (or restart, with the cluster state it saved) the node on `port`."""
        directory = self.workdir / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        assert self.binary is not None
        self.processes[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # A replica may always take over, however long it was cut off (tests kill masters).
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no", "--dir", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not start")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok, with every slot served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [self.node(port).cluster("info") for port in self.running()]
                if all(i["cluster_state"] == "ok" and int(i["cluster_slots_ok"]) == 16384 for i in infos):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def wait_failover(self, key: str, dead: int, timeout: float = 30.0) -> int:
        """Until a replica of the dead master serves `key`'s slot, and the cluster is ok; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (master := self.master_of(key)) != dead:
                    self.wait_ok(max(1.0, deadline - time.monotonic()))
                    return master
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no replica of {dead} took over")

    def wait_replicated(self, masters: int, replicas: int, timeout: float = 30.0) -> None:
        """Until every master has its replicas online (their first sync done): a replica
        promoted before that would hold nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            online = 0
            for port in self.running():
                info = self.node(port).info("replication")
                if info["role"] == "master":
                    online += sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                                  and v.get("state") == "online")
            if online == masters * replicas:
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster's replicas did not come online")

    def running(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.running()[0], socket_timeout=2)

    def master_of(self, key: str) -> int:
        """The port of the master serving the slot of `key`, as the cluster says now."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self.node(self.running()[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise RuntimeError(f"slot {slot} has no master")

    def masters(self) -> set[int]:
        """The ports of the masters serving slots now."""
        return {int(master[1]) for _, _, master, *_ in self.node(self.running()[0]).execute_command("CLUSTER", "SLOTS")}

    def another_master(self, port: int) -> int:
        return min(self.masters() - {port})

    def kill(self, port: int) -> None:
        """kill -9: no goodbye to the cluster."""
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)

    def migrate_slot(self, slot: int, source: int, target: int) -> None:
        """Move `slot` (with its keys) from master `source` to master `target`, as
        `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, MIGRATE the keys, NODE."""
        src, dst = self.node(source), self.node(target)
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        masters = [p for p in self.running() if self.node(p).info("replication")["role"] == "master"]
        for port in (target, source, *[p for p in masters if p not in (source, target)]):
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
