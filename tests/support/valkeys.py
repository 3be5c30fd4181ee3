"""Extra Valkey servers from the embedded binary, for the deploy tests: one with an ACL file, and a
real 3-master Redis Cluster on 127.0.0.1. Each is a real valkey-server process, stopped (and its
data removed) when the block ends; start-up is bounded so a broken cluster fails fast."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.embedded import Valkey, free_port

CLI = Valkey.binary().with_name("valkey-cli")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Valkey wants it <= 55535."""
    for _ in range(1000):
        port = free_port()
        if port <= 55_000 and _port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"valkey on {port} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"valkey did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@contextmanager
def valkey_server(
    data_dir: Path, *extra: str, port: int | None = None, timeout: float = 15
) -> Iterator[int]:
    """A valkey-server with `extra` arguments; yields its port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = data_dir / "valkey.log"
    args = [
        str(Valkey.binary()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--logfile", str(log),
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, start_new_session=True)
    try:
        _wait_listening(port, proc, log, timeout)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Cluster:
    ports: Sequence[int]

    @property
    def url(self) -> str:
        """Any one node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"


def _cli(port: int, *args: str, timeout: float = 20) -> str:
    result = subprocess.run(
        [str(CLI), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"valkey-cli {' '.join(args)}: {result.stdout}{result.stderr}")
    return result.stdout


@contextmanager
def valkey_cluster(data_dir: Path, masters: int = 3, timeout: float = 30) -> Iterator[Cluster]:
    """A local Redis Cluster of `masters` primaries and no replicas, every slot assigned."""
    try:
        with _nodes(data_dir, masters) as ports:
            nodes = [f"127.0.0.1:{p}" for p in ports]
            _cli(
                ports[0], "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"
            )
            deadline = time.monotonic() + timeout
            while not all("cluster_state:ok" in _cli(p, "cluster", "info") for p in ports):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster on {ports} did not reach cluster_state:ok")
                time.sleep(0.1)
            yield Cluster(ports)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def _nodes(data_dir: Path, count: int) -> Iterator[list[int]]:
    if count == 0:
        yield []
        return
    node_dir = data_dir / f"node{count}"
    cluster_args = (
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(node_dir / "nodes.conf"),
        "--cluster-node-timeout", "2000",
        "--maxmemory-policy", "noeviction",
    )  # fmt: skip
    node = valkey_server(node_dir, *cluster_args, port=cluster_port())
    with node as port, _nodes(data_dir, count - 1) as rest:
        yield [*rest, port]
