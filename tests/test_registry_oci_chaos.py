"""The OCI backend under chaos: writers and the registry killed at random points.

Each of 30 registrations runs in its own (forked) process, which announces every HTTP call it is about
to make and waits for the test's go-ahead; the test kills the writer, or the registry
(restarting it at once or after the writer gave up), just before a random one of those calls,
so kills land exactly in every step: upload, claim, index write, tag push, release. After
every step it reads each `vN` tag's manifest digest from the registry's own HTTP API: no tag
may ever point at a second manifest, and after a clean registration the index and the tags
must agree.
"""

from __future__ import annotations

import multiprocessing
import random
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests

from mlops_iac.errors import RegistryError
from mlops_iac.registry import Registry
from mlops_iac.registry.oci import OciStore

from .oci_helpers import RegistryProcess, manifest, version_tags

STEPS = 30
ACTIONS = ("none", "kill writer", "kill registry", "bounce registry")
HANG_GUARD = 120  # seconds for one writer; its calls time out after 2 s, two attempts each
# Writers are forked from a server that has imported mlops-iac once: a fresh interpreter per
# writer spent seconds on imports alone on a loaded runner.
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["mlops_iac.registry.oci", "oras.provider", "requests"])


def _writer(repository: str, model: str, conn: Connection) -> None:
    """One registration that asks the test before each HTTP call (so the test can kill it there)."""
    sent = requests.Session.request

    def announced(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        conn.send(("call", method, url))
        conn.recv()  # the go-ahead
        return sent(self, method, url, *args, **kwargs)

    requests.Session.request = announced  # type: ignore[method-assign,assignment]  # in this writer only
    store = OciStore(repository, insecure=True, env={}, timeout=2, retries=1)
    try:
        version, _ = Registry(store, env={}).register("chaos", Path(model), "sklearn")
    except RegistryError as exc:
        conn.send(("failed", str(exc)))
        return
    conn.send(("registered", version.version, version.digest))


def _run_step(
    registry: RegistryProcess, repository: str, model: Path, action: str, after: int
) -> list[tuple[Any, ...]]:
    """One writer's registration with `action` done just before its `after`-th call; what it said."""
    mine, theirs = FORKS.Pipe()
    writer = FORKS.Process(target=_writer, args=(repository, str(model), theirs))
    writer.start()
    theirs.close()
    said: list[tuple[Any, ...]] = []
    calls = 0
    while True:
        assert mine.poll(HANG_GUARD), "a writer hung"
        try:
            message = mine.recv()
        except EOFError:
            break  # it ended, or was killed
        said.append(message)
        if message[0] != "call":
            continue
        calls += 1
        if calls == after and action == "kill writer":
            writer.kill()
            break
        if calls == after and action != "none":
            registry.kill()  # the call about to be made finds no registry
            if action == "bounce registry":
                registry.start()  # it comes back before the call
        mine.send("go")
    writer.join(HANG_GUARD)
    mine.close()
    if registry.proc is None:
        registry.start()
    return said


def _agree(address: str, repository: str, repo: str, seen: dict[str, str]) -> dict[int, str]:
    """Assert the index lists exactly the versions with a tag, at the same bytes; {version: digest}."""
    index = OciStore(repository, insecure=True, env={}, timeout=5, retries=1).read_index("chaos")
    assert index is not None
    assert set(seen) == {f"v{n}" for n in index.versions}, (sorted(seen), sorted(index.versions))
    for number, version in index.versions.items():
        digest, shown = manifest(address, repo, f"v{number}")
        assert digest == seen[f"v{number}"]
        assert shown["layers"][0]["digest"] == version.digest
    return {n: v.digest for n, v in index.versions.items()}


def test_kills_of_writers_and_the_registry_never_move_a_tag(tmp_path: Path) -> None:
    rng = random.Random(31)
    registry = RegistryProcess(tmp_path)
    repository, repo = f"{registry.address}/chaos/models", "chaos/models/chaos"
    registry.start()
    seen: dict[str, str] = {}  # vN -> the first manifest digest it was seen at
    registered: dict[int, str] = {}
    try:
        for step in range(STEPS):
            model = tmp_path / f"model-{step}.bin"
            model.write_bytes(f"model {step} ".encode() * 500)
            action = ACTIONS[0] if step == STEPS - 1 else rng.choice(ACTIONS)  # the last one is clean
            said = _run_step(registry, repository, model, action, rng.randint(1, 25))
            for tag, digest in version_tags(registry.address, repo).items():
                assert seen.setdefault(tag, digest) == digest, f"step {step} ({action}): {tag} moved"
            for message in said:
                if message[0] == "registered":
                    assert registered.setdefault(message[1], message[2]) == message[2]
            if action == "none":
                assert said[-1][0] == "registered", f"step {step}: a clean registration failed: {said[-1]}"
                _agree(registry.address, repository, repo, seen)
        final = _agree(registry.address, repository, repo, seen)
        assert all(final[n] == digest for n, digest in registered.items())
        assert len(set(final.values())) == len(final)  # no bytes registered twice
    finally:
        registry.kill()
