"""The local registry under abuse: many writers, some killed mid-write; and a state machine."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mlops_iac.errors import RegistryError
from mlops_iac.registry import LocalStore, Registry, parse_ref

WRITER = """
import sys
from pathlib import Path
from mlops_iac.registry import LocalStore, Registry
registry = Registry(LocalStore(Path(sys.argv[1])), env={})
worker = int(sys.argv[2])
for i in range(int(sys.argv[3])):
    path = Path(sys.argv[4]) / f"w{worker}-{i}.bin"
    path.write_bytes(f"worker {worker} item {i} ".encode() * 2000)
    version, _ = registry.register("soak", path, "sklearn")
    print(version.version, version.digest, flush=True)
"""


EACH = 12


def test_fifty_writers_with_a_fifth_killed(tmp_path: Path) -> None:
    root, work = tmp_path / "registry", tmp_path / "work"
    work.mkdir()
    rng = random.Random(7)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(w), str(EACH), str(work)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(50)
    ]
    doomed = set(rng.sample(range(50), 10))
    # Each doomed writer dies by SIGKILL right after its k-th registration, i.e. in the middle
    # of the next one: somewhere in hashing, copying, waiting for or holding the lock.
    outputs: dict[int, tuple[str, str]] = {}
    threads = [
        threading.Thread(target=_kill_after, args=(procs[w], rng.randint(1, EACH - 1), outputs, w)) for w in doomed
    ]
    for thread in threads:
        thread.start()
    for w, proc in enumerate(procs):
        if w not in doomed:
            outputs[w] = proc.communicate(timeout=300)
            assert proc.returncode == 0, outputs[w][1]
    for thread in threads:
        thread.join(300)

    registry = Registry(LocalStore(root))  # opens cleanly after the carnage
    index = registry.index("soak")
    numbers = sorted(index.versions)
    assert numbers == list(range(1, len(numbers) + 1)), "a gap or a duplicate"
    assert index.next_version == len(numbers) + 1
    digests = [v.digest for v in index.versions.values()]
    assert len(set(digests)) == len(digests)
    survivors = [
        (int(n), d)
        for w, (out, _) in outputs.items()
        if w not in doomed
        for n, d in (line.split() for line in out.splitlines())
    ]
    assert len(survivors) == 40 * EACH
    # The kills landed while writers were working, not before they started or after they ended.
    cut_short = [w for w in doomed if 0 < len(outputs[w][0].splitlines()) < EACH]
    assert cut_short, "no writer was killed in the middle of its registrations"
    for number, digest in survivors:  # nothing a finished writer was told was lost
        assert index.versions[number].digest == digest
    for digest in digests:
        blob = root / "blobs/sha256" / digest.removeprefix("sha256:")
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    leftovers = [p.name for p in (root / "index").iterdir() if p.name != "soak.json"]
    assert all(name.startswith(".") for name in leftovers)  # only dead writers' temp files
    after, created = registry.register("soak", _file(tmp_path, b"after"), "sklearn")
    assert created and after.version == len(numbers) + 1


def _kill_after(proc: subprocess.Popen[str], lines: int, outputs: dict[int, tuple[str, str]], worker: int) -> None:
    assert proc.stdout is not None
    seen = [proc.stdout.readline() for _ in range(lines)]
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=300)
    outputs[worker] = ("".join(seen) + rest, err)


def _file(folder: Path, content: bytes) -> Path:
    path = folder / hashlib.sha256(content).hexdigest()[:12]
    path.write_bytes(content)
    return path


CONTENTS = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"])
ALIASES = st.sampled_from(["production", "staging", "canary"])


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        self.registry = Registry(LocalStore(self.folder / "r"), env={})
        self.content: dict[int, bytes] = {}  # the model: what each live version holds
        self.highest = 0
        self.aliases: dict[str, int] = {}

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(content=CONTENTS)
    def register(self, content: bytes) -> None:
        version, created = self.registry.register("m", _file(self.folder, content), "onnx")
        live = {c: n for n, c in self.content.items()}
        if content in live:
            assert (version.version, created) == (live[content], False)
        else:
            assert created and version.version == self.highest + 1
            self.highest = version.version
            self.content[version.version] = content

    @precondition(lambda self: self.content)
    @rule(data=st.data(), key=st.sampled_from(["team", "stage"]), value=st.text(max_size=5))
    def tag(self, data: st.DataObject, key: str, value: str) -> None:
        number = data.draw(st.sampled_from(sorted(self.content)))
        assert self.registry.tag(parse_ref(f"m@{number}"), {key: value}).tags[key] == value

    @precondition(lambda self: self.content)
    @rule(data=st.data(), alias=ALIASES)
    def alias(self, data: st.DataObject, alias: str) -> None:
        number = data.draw(st.sampled_from(sorted(self.content)))
        self.registry.alias(parse_ref(f"m@{number}"), alias)
        self.aliases[alias] = number

    @precondition(lambda self: self.content)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(sorted(self.content)))
        if number in self.aliases.values():
            with pytest.raises(RegistryError, match="named by alias"):
                self.registry.delete(parse_ref(f"m@{number}"), lambda v: [])
            return
        self.registry.delete(parse_ref(f"m@{number}"), lambda v: [])
        del self.content[number]

    @invariant()
    def matches_the_model(self) -> None:
        if not self.content and self.highest == 0:
            return
        index = self.registry.index("m")
        assert sorted(index.versions) == sorted(self.content)
        assert index.next_version == self.highest + 1  # strictly increasing, never reused
        assert index.aliases == self.aliases
        assert all(n in index.versions for n in index.aliases.values())
        for number, content in self.content.items():  # bytes under a digest never change
            out = self.folder / "pulled"
            self.registry.pull(parse_ref(f"m@{number}"), out)
            assert out.read_bytes() == content
            assert index.versions[number].digest == "sha256:" + hashlib.sha256(content).hexdigest()


RegistryMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_registry_state_machine = RegistryMachine.TestCase


def test_writer_killed_holding_the_lock_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "index").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
            str(root / "index"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    version, _ = Registry(LocalStore(root)).register("m", _file(tmp_path, b"x"), "onnx")
    assert version.version == 1
