"""Worker processes: one event loop per core, on the same listening sockets.

One Python process serves on one core (the GIL), and on small models the HTTP stack, not
onnxruntime, is the cost: the way to more requests per second is more processes. The
supervisor binds the sockets (so port 0 and "port in use" behave as with one process),
starts the workers with `spawn` (onnxruntime's thread pools do not survive a fork), forwards
SIGTERM and SIGINT so that every worker drains its requests in flight, and exits when they
have. A worker that dies takes the others down with it: the container or the pod restarts
the whole server (crash-only), which keeps the supervisor small.

gRPC (with `grpc_port`) is served by the first worker, REST by all of them.

How many: `workers` of the server settings (rendered from the recommended CPU, see
`config.workers_for`), 0 meaning one per CPU; never more than the
CPUs the container may use (its CFS quota, else the CPUs it may run on), since a worker
without a core of its own only adds contention.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from ..errors import MlopsIacError
from .config import ServerConfig


def cpu_limit() -> int:
    """The CPUs this process may use: the cgroup's CPU quota (v2 or v1), rounded up, within
    the CPUs it may be scheduled on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota in cores (None: none). cgroup v2: the tightest `cpu.max` ("max 100000" or
    "200000 100000") of this process's cgroup and its parents, as a quota set on a parent (a
    systemd `CPUQuota=` slice, a pod whose containers share it) binds too; without a cgroup
    namespace the own cgroup is a path below `root`, not `root` itself."""
    quotas = []
    for folder in _own_cgroups(root, own):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    if quotas:
        return min(quotas)
    try:  # cgroup v1
        quota_us = int((root / "cpu/cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def _own_cgroups(root: Path, own: Path) -> list[Path]:
    """This process's cgroup v2 folder and its parents up to `root` ("0::/path" in /proc)."""
    try:
        line = next(x for x in own.read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return [root]
    folder = root / line[3:].strip().lstrip("/")
    chain = [folder, *folder.parents]
    return chain[: chain.index(root) + 1] if root in chain else [root]


def worker_count(requested: int) -> int:
    """`requested` workers (0: one per CPU), at most one per CPU the container may use."""
    limit = cpu_limit()
    return min(requested, limit) if requested > 0 else limit


def supervise(config: ServerConfig, base: Path, sockets: list[socket.socket], count: int, log_level: str) -> None:
    """Runs `count` workers on `sockets` (the main one, then the metrics one if any) until
    SIGTERM or SIGINT, or until one of them exits."""
    context = multiprocessing.get_context("spawn")
    folder = Path(tempfile.mkdtemp(prefix="mlops-iac-workers-"))  # /tmp: in memory in the pod
    # With SO_REUSEPORT each worker after the first listens on a socket of its own and the
    # kernel spreads connections over them evenly; one shared socket goes to whichever worker
    # wakes first (measured 1:2 between two workers under wrk at 32 connections).
    main, rest = sockets[0], sockets[1:]
    # gRPC on the first worker only: grpcio binds its port itself, and several processes on it
    # would need SO_REUSEPORT there too, which also lets any other process of this user take a
    # share of the connections unnoticed. One process answers gRPC (drained and counted like
    # REST); REST, the common path, is served by every worker.
    without_grpc = config.model_copy(update={"grpc_port": None})
    own = bool(main.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    processes = [
        context.Process(
            target=_worker,
            name=f"mlops-iac-worker-{i}",
            args=(
                config if i == 0 else without_grpc,
                base,
                [None if own and i else main, *rest],
                main.getsockname()[:2],
                i,
                str(folder),
                log_level,
            ),
        )
        for i in range(count)
    ]
    signalled = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        signalled = True
        _terminate(processes)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        for sock in sockets:
            sock.close()  # the workers hold their own copies
        wait([p.sentinel for p in processes])
        if not signalled:
            _terminate(processes)  # one stopped unasked: stop the rest, and say so below
        for process in processes:
            process.join()  # exit codes are known only now (a closed sentinel can precede the exit)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(folder, ignore_errors=True)
    failed = [p for p in processes if p.exitcode not in (0, -signal.SIGTERM)]
    if failed or not signalled:
        which = (failed or processes)[0]
        raise MlopsIacError(f"worker {which.name} stopped (exit code {which.exitcode}); see its error above")


def _terminate(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signal.SIGTERM)  # each worker drains, as a single server does


def _worker(
    config: ServerConfig,
    base: Path,
    sockets: list[socket.socket | None],
    address: tuple[str, int],
    index: int,
    folder: str,
    log_level: str,
) -> None:
    from .run import bind, serve_one

    try:
        main = sockets[0] if sockets[0] is not None else bind(*address, join=True)
        rest = [s for s in sockets[1:] if s is not None]
        serve_one(config, base, [main, *rest], log_level=log_level, shared=(Path(folder), index))
    except MlopsIacError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
