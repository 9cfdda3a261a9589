"""Worker processes: one event loop per core, on the same listening sockets.

One Python process serves on one core (the GIL), and on small models the HTTP stack, not
onnxruntime, is the cost: the way to more requests per second is more processes. The
supervisor binds the sockets (so port 0 and "port in use" behave as with one process),
starts the workers with `spawn` (onnxruntime's thread pools do not survive a fork), forwards
SIGTERM and SIGINT so that every worker drains its requests in flight, and exits when they
have. A worker that dies (killed, out of memory, crashed) is replaced while the others keep
serving: its replacement loads its models before it listens, so no connection meets it
unready and /v2/health/ready stays true, and the dead worker's counters stay in /metrics.
Past RESTARTS deaths within WINDOW_S, or when a worker cannot start at all (its models do
not load), the supervisor stops every worker and exits 1: then the container or the pod
restarts the whole server, with its backoff.

gRPC (with `grpc_port`) is served by the first worker, REST by all of them. With a collection
file, each worker after the first writes its own beside it (`requests.w1.jsonl`, ...): one
file takes one writer, since a failed write is cut back to that writer's last whole line.

How many: `workers` of the server settings (rendered from the recommended CPU, see
`config.workers_for`), 0 meaning one per CPU; never more than the
CPUs the container may use (its CFS quota, else the CPUs it may run on), since a worker
without a core of its own only adds contention.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path, PurePosixPath
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


# A worker that dies is replaced, at most RESTARTS times within WINDOW_S: past that, something
# kills every replacement (a request of death, too little memory) and restarting only hides it.
# MLOPS_IAC_WORKER_RESTARTS="N/SECONDS" sets them (tests, chaos drills).
RESTARTS, WINDOW_S = 5, 60.0
RESTARTS_ENV = "MLOPS_IAC_WORKER_RESTARTS"
# A worker's own "I cannot start" (models that do not load, a port it cannot take): the next
# one would fail alike, so the server stops, as a single process does.
CANNOT_START = 3


def supervise(config: ServerConfig, base: Path, sockets: list[socket.socket], count: int, log_level: str) -> None:
    """Runs `count` workers on `sockets` (the main one, then the metrics one if any) until
    SIGTERM or SIGINT, replacing a worker that dies (see RESTARTS), and stopping them all when
    one cannot start."""
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
    address = main.getsockname()[:2]
    limit = restart_limit(os.environ.get(RESTARTS_ENV))  # a typo fails before anything starts

    def worker(i: int, replacement: bool = False) -> BaseProcess:
        # A replacement joins the port only once its models are loaded (`late`): the kernel then
        # never hands it a connection it cannot answer, and the other workers serve meanwhile.
        first = None if own and (i or replacement) else main
        args = (config if i == 0 else without_grpc, base, [first, *rest], address, i, str(folder), log_level)
        process = context.Process(target=_worker, name=f"mlops-iac-worker-{i}", args=(*args, replacement))
        process.start()
        return process

    processes: list[BaseProcess] = []
    signalled = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        signalled = True
        _terminate(processes)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        processes.extend(worker(i) for i in range(count))
        if own:
            main.close()  # the first worker holds its own copy; the others and replacements join
        _keep_serving(processes, worker, folder, lambda: signalled, limit)
    finally:
        _terminate(processes)
        for process in processes:
            process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in sockets:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _keep_serving(
    processes: list[BaseProcess],
    worker: Callable[[int, bool], BaseProcess],
    folder: Path,
    signalled: Callable[[], bool],
    limit: tuple[int, float],
) -> None:
    """Replaces each worker that dies unasked until SIGTERM; raises when one cannot start or
    they die too often. Returns once every worker stopped on SIGTERM."""
    from .metrics import retire

    restarts, window = limit
    deaths: deque[float] = deque()
    while True:
        wait([p.sentinel for p in processes if p.exitcode is None])
        for i, process in enumerate(processes):
            if process.exitcode is None and process.is_alive():
                continue
            process.join()  # exit codes are known only now (a closed sentinel can precede the exit)
            if signalled():
                continue
            how = _exit(process.exitcode)
            if process.exitcode == CANNOT_START:
                raise MlopsIacError(f"worker {process.name} could not start ({how}); see its error above")
            now = time.monotonic()
            deaths.append(now)
            while deaths and deaths[0] < now - window:
                deaths.popleft()
            if len(deaths) > restarts:
                raise MlopsIacError(
                    f"workers stopped {len(deaths)} times within {window:g} s (the last, {process.name}, "
                    f"{how}); not replacing them again: see their errors above"
                )
            print(f"worker {process.name} stopped ({how}); starting another", file=sys.stderr, flush=True)
            retire(folder, i)
            processes[i] = worker(i, True)
            if signalled():  # SIGTERM came while it started: it drains like the others
                _terminate(processes[i : i + 1])
        if signalled() and all(p.exitcode is not None for p in processes):
            if failed := [p for p in processes if p.exitcode not in (0, -signal.SIGTERM)]:
                raise MlopsIacError(f"worker {failed[0].name} stopped ({_exit(failed[0].exitcode)}) while draining")
            return


def restart_limit(text: str | None) -> tuple[int, float]:
    """RESTARTS_ENV's "N/SECONDS" (None: the defaults)."""
    if text is None:
        return RESTARTS, WINDOW_S
    try:
        count, seconds = text.split("/")
        limit = int(count), float(seconds)
    except ValueError:
        limit = (-1, 0.0)
    if limit[0] < 0 or not limit[1] > 0:
        raise MlopsIacError(f'{RESTARTS_ENV} is "{text}": expected N/SECONDS, e.g. "{RESTARTS}/{WINDOW_S:g}"')
    return limit


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


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
    replacement: bool = False,
) -> None:
    from .run import bind, serve_one

    _stop_with_supervisor()
    config = own_collection_file(config, index)
    try:
        if sockets[0] is not None:
            main = sockets[0]
        else:  # its own socket on the shared port; a replacement's listens only once it is ready
            main = _unlistened(address) if replacement else bind(*address, join=True)
        rest = [s for s in sockets[1:] if s is not None]
        serve_one(
            config, base, [main, *rest], log_level=log_level, shared=(Path(folder), index), load_first=replacement
        )
    except MlopsIacError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(CANNOT_START)


def _stop_with_supervisor() -> None:
    """A supervisor killed with SIGKILL cannot stop its workers, and they would serve on,
    orphaned, holding the port: the kernel sends each one SIGTERM (it drains) when the
    supervisor dies (Linux's PR_SET_PDEATHSIG), and a worker whose supervisor died before
    this ran stops at once."""
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM is the only stop
        return
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def own_collection_file(config: ServerConfig, index: int) -> ServerConfig:
    """Worker `index`'s settings: after the first, a collection file of its own beside the
    first's (`collected/requests.jsonl` -> `collected/requests.w1.jsonl`), which a folder of
    collected records (`monitor drift`, `shadow report`) picks up with the rest."""
    collection = config.collection
    if index == 0 or not (collection.enabled and collection.sink == "file"):
        return config
    path = PurePosixPath(collection.path)
    own = str(path.with_name(f"{path.stem}.w{index}{path.suffix}"))
    return config.model_copy(update={"collection": collection.model_copy(update={"path": own})})


def _unlistened(address: tuple[str, int]) -> socket.socket:
    """A socket bound to the workers' port (SO_REUSEPORT) that takes no connection yet: the
    kernel hands connections only to listening sockets, and uvicorn listens once it serves."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MlopsIacError(f"cannot listen on {address[0]}:{address[1]} again: {reason}") from None
    return sock
