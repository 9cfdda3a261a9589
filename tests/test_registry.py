"""The registry's behaviour, run against both backends: a local folder and a real OCI registry."""

from __future__ import annotations

import io
import multiprocessing
import secrets
import tarfile
import tempfile
from pathlib import Path

import pytest

from mlops_iac.errors import RegistryError
from mlops_iac.registry import LocalStore, Ref, Registry, parse_ref
from mlops_iac.registry.archive import export_archive, import_archive
from mlops_iac.registry.oci import OciStore

from .conftest import OciRegistryServer


def make_registry(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Registry:
    env = {"GITHUB_SHA": "a" * 40, "GITHUB_REPOSITORY": "acme/shop", "GITHUB_RUN_ID": "42"}
    if kind == "local":
        return Registry(LocalStore(tmp_path / "registry"), env=env)
    server: OciRegistryServer = request.getfixturevalue("oci_registry")
    repository = f"{server.address}/t{secrets.token_hex(4)}/models"
    return Registry(OciStore(repository, insecure=True, env={}), env=env)


@pytest.fixture(params=["local", "oci"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    return make_registry(request.param, tmp_path, request)


def artifact(folder: Path, content: bytes, name: str = "model.joblib") -> Path:
    path = folder / f"{secrets.token_hex(4)}-{name}"
    path.write_bytes(content)
    return path


def test_versions_are_numbered_and_deduplicated(registry: Registry, tmp_path: Path) -> None:
    one, created = registry.register(
        "iris", artifact(tmp_path, b"v1"), "sklearn", tags={"team": "ml"}, metrics={"accuracy": 0.97}
    )
    assert (one.version, created) == (1, True)
    assert one.digest == "sha256:" + __import__("hashlib").sha256(b"v1").hexdigest()
    assert one.lineage.git_commit == "a" * 40
    assert one.lineage.ci_run == "https://github.com/acme/shop/actions/runs/42"
    again, created = registry.register("iris", artifact(tmp_path, b"v1"), "sklearn")
    assert (again.version, created) == (1, False)
    two, _ = registry.register("iris", artifact(tmp_path, b"v2"), "sklearn")
    assert two.version == 2
    assert registry.models() == ["iris"]
    assert registry.resolve(Ref("iris")).version == 2
    assert registry.resolve(parse_ref(f"iris@{one.digest}")).version == 1
    assert registry.resolve(parse_ref("iris@1")).tags == {"team": "ml"}


def test_unknown_references_are_clear(registry: Registry, tmp_path: Path) -> None:
    registry.register("iris", artifact(tmp_path, b"v1"), "sklearn")
    with pytest.raises(RegistryError, match=r"iris@7 does not exist \(versions: 1\)"):
        registry.resolve(parse_ref("iris@7"))
    with pytest.raises(RegistryError, match="no alias 'production'"):
        registry.resolve(parse_ref("iris@production"))
    with pytest.raises(RegistryError, match="no model named 'wine'"):
        registry.resolve(parse_ref("wine@1"))


def test_aliases_move_with_history_and_guard(registry: Registry, tmp_path: Path) -> None:
    registry.register("iris", artifact(tmp_path, b"v1"), "sklearn")
    registry.register("iris", artifact(tmp_path, b"v2"), "sklearn")
    registry.alias(parse_ref("iris@1"), "production")
    registry.alias(parse_ref("iris@2"), "production")
    assert registry.resolve(parse_ref("iris@production")).version == 2
    moves = [e for e in registry.index("iris").history if e.action == "alias"]
    assert [(e.version, e.detail["from"]) for e in moves] == [(1, None), (2, 1)]
    registry.set_status(parse_ref("iris@1"), "rejected", {"metric": "accuracy", "value": 0.2})
    with pytest.raises(RegistryError, match="rejected by validation"):
        registry.alias(parse_ref("iris@1"), "production")
    registry.alias(parse_ref("iris@1"), "staging")  # other aliases are not guarded
    with pytest.raises(RegistryError, match="invalid alias"):
        registry.alias(parse_ref("iris@1"), "latest")


def test_tags_and_links_are_recorded(registry: Registry, tmp_path: Path) -> None:
    registry.register("iris", artifact(tmp_path, b"v1"), "sklearn", tags={"a": "1"})
    version = registry.tag(parse_ref("iris@1"), {"b": "2"}, ("a",))
    assert version.tags == {"b": "2"}
    onnx = registry.link(parse_ref("iris@1"), "onnx", artifact(tmp_path, b"onnx!", "m.onnx"), {"opset": 17})
    assert onnx.derived_from == version.digest
    out = tmp_path / "pulled.onnx"
    registry.pull(parse_ref("iris@1"), out, "onnx")
    assert out.read_bytes() == b"onnx!"
    actions = [e.action for e in registry.index("iris").history]
    assert actions == ["register", "tag", "untag", "link"]


def test_delete_guards_and_never_reuses_numbers(registry: Registry, tmp_path: Path) -> None:
    for content in (b"v1", b"v2", b"v3"):
        registry.register("iris", artifact(tmp_path, content), "sklearn")
    with pytest.raises(RegistryError, match="still deployed; remove it from these first: prod"):
        registry.delete(parse_ref("iris@2"), lambda v: ["prod"] if v.version == 2 else [])
    registry.alias(parse_ref("iris@3"), "production")
    with pytest.raises(RegistryError, match="named by alias"):
        registry.delete(parse_ref("iris@3"), lambda v: [])
    registry.unalias("iris", "production")
    registry.delete(parse_ref("iris@3"), lambda v: [])
    four, _ = registry.register("iris", artifact(tmp_path, b"v4"), "sklearn")
    assert four.version == 4
    assert sorted(registry.index("iris").versions) == [1, 2, 4]


def test_pull_verifies_the_digest(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for kind in ("local", "oci"):
        registry = make_registry(kind, tmp_path / kind, request)
        version, _ = registry.register("iris", artifact(tmp_path, b"precious" + kind.encode()), "sklearn")
        if kind == "local":
            assert isinstance(registry.store, LocalStore)
            blob = registry.store.root / "blobs/sha256" / version.digest.removeprefix("sha256:")
        else:
            blob = request.getfixturevalue("oci_registry").blob_path(version.digest)
        blob.chmod(0o644)
        blob.write_bytes(b"tampered" + kind.encode())
        dest = tmp_path / f"{kind}.out"
        with pytest.raises(RegistryError, match="corrupted"):
            registry.pull(parse_ref("iris@1"), dest)
        assert not dest.exists()  # nothing half-written, nothing corrupted served


def test_export_import_round_trip_across_backends(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = make_registry("local", tmp_path / "a", request)
    source.register("iris", artifact(tmp_path, b"v1"), "sklearn")
    source.register("iris", artifact(tmp_path, b"v2"), "sklearn")
    source.link(parse_ref("iris@2"), "onnx", artifact(tmp_path, b"o"), {})
    source.alias(parse_ref("iris@2"), "production")
    archive = tmp_path / "iris.tar.gz"
    export_archive(source, archive)
    again = tmp_path / "again.tar.gz"
    export_archive(source, again)
    assert archive.read_bytes() == again.read_bytes()  # deterministic
    target = make_registry("oci", tmp_path / "b", request)
    assert import_archive(target, archive) == ["iris"]
    assert target.resolve(parse_ref("iris@production")).version == 2
    out = tmp_path / "o.onnx"
    target.pull(parse_ref("iris@2"), out, "onnx")
    assert out.read_bytes() == b"o"
    assert import_archive(target, archive) == ["iris"]  # idempotent
    assert sorted(target.index("iris").versions) == [1, 2]


def _tar(entries: dict[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("index/evil.json")
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "entries,link",
    [
        ({"../evil.json": b"{}"}, None),
        ({"/etc/evil": b"x"}, None),
        ({"index/../../evil.json": b"{}"}, None),
        ({"blobs/sha256/zz": b"x"}, None),
        ({}, "/etc/passwd"),
    ],
)
def test_import_refuses_unsafe_archives(tmp_path: Path, entries: dict[str, bytes], link: str | None) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar(entries, link))
    registry = Registry(LocalStore(tmp_path / "r"))
    with pytest.raises(RegistryError, match="refusing archive entry"):
        import_archive(registry, archive)
    assert registry.models() == []
    assert not (tmp_path / "evil.json").exists()


def test_import_rejects_a_blob_that_does_not_match(tmp_path: Path) -> None:
    source = Registry(LocalStore(tmp_path / "a"))
    version, _ = source.register("iris", artifact(tmp_path, b"v1"), "sklearn")
    archive = tmp_path / "a.tar.gz"
    export_archive(source, archive)
    with tarfile.open(archive) as tar:
        entries = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    entries[f"blobs/sha256/{version.digest.removeprefix('sha256:')}"] = b"evil"
    archive.write_bytes(_tar(entries))
    target = Registry(LocalStore(tmp_path / "b"))
    with pytest.raises(RegistryError, match="does not match its digest"):
        import_archive(target, archive)
    assert target.models() == []


@pytest.mark.parametrize(
    "text",
    [
        "..",
        "../etc",
        "/abs",
        "a/b",
        "a\\b",
        "%2e%2e",
        "Iris",
        "iris@0",
        "iris@01",
        "iris@..",
        "iris@sha256:xyz",
        "iris@a/b",
        "",
        "iris@",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(RegistryError, match="invalid reference"):
        parse_ref(text)


def test_bad_model_names_are_refused(tmp_path: Path) -> None:
    registry = Registry(LocalStore(tmp_path / "r"))
    for name in ("..", "a/b", "%2e%2e", "UPPER", "x" * 64):
        with pytest.raises(RegistryError, match="invalid model name"):
            registry.register(name, artifact(tmp_path, b"x"), "sklearn")
    assert not (tmp_path / "r" / "index").exists() or registry.models() == []


def _register_many(args: tuple[str, str, int, int]) -> list[int]:
    kind, location, worker, count = args
    store = LocalStore(Path(location)) if kind == "local" else OciStore(location, insecure=True, env={})
    registry = Registry(store, env={})
    folder = Path(tempfile.mkdtemp())
    numbers = []
    for i in range(count):
        path = folder / f"w{worker}-{i}-{secrets.token_hex(3)}.bin"
        path.write_bytes(f"worker {worker} item {i}".encode())
        numbers.append(registry.register("iris", path, "sklearn")[0].version)
        path.unlink()
    return numbers


@pytest.mark.parametrize("kind", ["local", "oci"])
def test_concurrent_registrations_never_collide(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "local":
        location = str(tmp_path / "registry")
    else:
        server: OciRegistryServer = request.getfixturevalue("oci_registry")
        location = f"{server.address}/c{secrets.token_hex(4)}/models"
    workers, each = 6, 3
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_register_many, [(kind, location, w, each) for w in range(workers)])
    numbers = sorted(n for result in results for n in result)
    assert numbers == list(range(1, workers * each + 1))
    store = LocalStore(Path(location)) if kind == "local" else OciStore(location, insecure=True, env={})
    assert sorted(Registry(store).index("iris").versions) == numbers
