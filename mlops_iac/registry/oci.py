"""The OCI registry backend: model versions as OCI artifacts in any distribution registry.

Layout, for `repository: ghcr.io/acme/models` and model `iris`:

    ghcr.io/acme/models/iris:v3         ORAS-compatible manifest, one layer: the artifact
    ghcr.io/acme/models/iris:v3-onnx    a linked artifact of version 3 (its ONNX conversion)
    ghcr.io/acme/models/iris:index      the model's index (versions, aliases, history)
    ghcr.io/acme/models:catalog         the list of models (registries need not list repos)
    .../iris:lock-<nonce>               a writer's claim while it changes the index

`oras pull ghcr.io/acme/models/iris:v3` fetches a version with no mlops-iac installed.

Why version numbers cannot collide, with no compare-and-swap in the distribution API:
index changes run under a mutex built from tags ("announce, then check"). A writer pushes a
unique claim tag, then lists the tags; it holds the mutex only if it saw no other live claim,
otherwise it deletes its claim and backs off for a random time. Of two writers, the one that
lists second necessarily sees the other's claim (each lists after its own claim is stored),
so both can back off but both can never proceed. A claim whose writer died goes stale after
`CLAIM_TTL` seconds, or at once where its process provably died (`oci_claim.py`), and is then
ignored; a holder that has taken half of that time aborts before writing.

Why a version, once visible, never changes: the index is written first and the `vN` tags
last, from the index, with bytes that depend only on the version's record. A writer that dies
in between leaves versions that the index lists but no tag shows yet; the next change, or a
retry of the same registration, pushes exactly those tags and reuses the ones that exist, so
a tag is never pushed twice with other bytes. A `vN` tag that the index does not list (left
by an interrupted push of an older mlops-iac) keeps its number: new versions skip past it.

All this needs read-after-write consistent tag listing (a single registry, or one with
consistent storage) and tag deletion enabled (GHCR, ACR, ECR, Harbor and
`registry:2` with `delete: enabled` have both).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..contract import REGISTRY_PASSWORD_ENV, REGISTRY_USERNAME_ENV
from ..errors import RegistryError
from .oci_claim import ANNOTATION, CLAIM_TTL, claim_annotations, is_stale
from .oci_http import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    EMPTY_BLOB,
    MANIFEST,
    OciHttp,
    RegistryUnreachable,
    manifest_body,
)
from .records import ModelIndex, Version
from .refs import check_name
from .store import IndexChange, copy_verified

EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
MODEL_TYPE = "application/vnd.mlops-iac.model.v1"
INDEX_TYPE = "application/vnd.mlops-iac.index.v1+json"
CLAIM_TYPE = "application/vnd.mlops-iac.claim.v1"
WAIT_LIMIT = 300.0
VERSION_TAG = re.compile(r"v([0-9]+)(-.+)?")


def _manifest(artifact_type: str, layers: list[dict[str, Any]], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": len(EMPTY_BLOB)},
        "layers": layers,
        "annotations": dict(sorted(annotations.items())),
    }


def version_manifests(version: Version) -> dict[str, bytes]:
    """The tags a version shows (`v3`, `v3-onnx`) and their manifests, from its record alone."""
    notes = {
        f"{ANNOTATION}.model": version.model,
        f"{ANNOTATION}.version": str(version.version),
        f"{ANNOTATION}.framework": version.framework,
        "org.opencontainers.image.created": version.lineage.created,
    }
    if version.lineage.git_commit:
        notes["org.opencontainers.image.revision"] = version.lineage.git_commit

    def layer(digest: str, size: int, title: str) -> dict[str, Any]:
        return {
            "mediaType": "application/octet-stream",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.title": title},
        }

    out = {
        f"v{version.version}": manifest_body(
            _manifest(MODEL_TYPE, [layer(version.digest, version.size, version.lineage.filename)], notes)
        )
    }
    for kind, artifact in sorted(version.artifacts.items()):
        linked = {**notes, f"{ANNOTATION}.derived-from": artifact.derived_from}
        out[f"v{version.version}-{kind}"] = manifest_body(
            _manifest(MODEL_TYPE, [layer(artifact.digest, artifact.size, artifact.filename)], linked)
        )
    return out


def _past_orphans(index: ModelIndex | None, tags: list[str], model: str) -> ModelIndex | None:
    """The index with `next_version` past every `vN` tag, so no number with a tag is given again."""
    top = max((int(m.group(1)) for t in tags if (m := VERSION_TAG.fullmatch(t))), default=0)
    if index is None:
        return None if top == 0 else ModelIndex(model=model, next_version=top + 1)
    return index if index.next_version > top else index.model_copy(update={"next_version": top + 1})


class OciStore:
    def __init__(
        self,
        repository: str,
        *,
        insecure: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        env = os.environ if env is None else env
        self.host, _, self.base = repository.partition("/")
        self.location = repository
        self.http = OciHttp(self.host, insecure=insecure, timeout=timeout, retries=retries)
        user, password = env.get(REGISTRY_USERNAME_ENV), env.get(REGISTRY_PASSWORD_ENV)
        if user and password:
            self.http.client.login(user, password)

    def _repo(self, model: str) -> str:
        return f"{self.base}/{check_name(model)}"

    # --- Store -------------------------------------------------------------------------------

    def put_blob(self, model: str, source: Path) -> tuple[str, int]:
        repo = self._repo(model)
        with self.http.step(f"uploading {source.name} to {self.host}/{repo}"):
            return self.http.upload(repo, source)

    def fetch_blob(self, model: str, digest: str, dest: Path) -> None:
        chunks = self.http.blob_chunks(self._repo(model), digest)
        copy_verified(chunks, digest, dest, f"blob {digest}")

    def models(self) -> list[str]:
        found = self.http.get_manifest(self.base, "catalog")
        if found is None:
            return []
        return sorted(json.loads(self._read_layer(self.base, found[0])))

    def read_index(self, model: str) -> ModelIndex | None:
        repo = self._repo(model)
        found = self.http.get_manifest(repo, "index")
        if found is None:
            return None
        try:
            return ModelIndex.model_validate_json(self._read_layer(repo, found[0]))
        except ValidationError as exc:
            raise RegistryError(f"{self.host}/{repo}:index is damaged: {exc.errors()[0]['msg']}") from None

    def _read_layer(self, repo: str, manifest: dict[str, Any]) -> bytes:
        layer = manifest["layers"][0]
        data = b"".join(self.http.blob_chunks(repo, layer["digest"]))
        if "sha256:" + hashlib.sha256(data).hexdigest() != layer["digest"]:
            raise RegistryError(f"{self.host}/{repo}: blob {layer['digest']} is corrupted")
        return data

    def update_index(self, model: str, change: IndexChange) -> ModelIndex | None:
        repo = self._repo(model)
        where = f"{self.host}/{repo}"
        with self._mutex(repo, f"the index of {model} in {where}") as (started, tags):
            with self.http.step(f"reading the index of {model} from {where}"):
                current = self.read_index(model)
            new = change(_past_orphans(current, tags, model))
            if new is not None and new != current:
                if time.monotonic() - started > CLAIM_TTL / 2:
                    raise RegistryError(
                        f"the change to {where} took too long to commit safely; nothing was written, try again"
                    )
                with self.http.step(f"writing the index of {model} to {where}"):
                    self._write_document(repo, "index", INDEX_TYPE, _index_bytes(new))
            if new is not None:
                self._sync_version_tags(repo, new, set(tags))
        if current is None and new is not None:
            with self.http.step(f"adding {model} to the catalog of {self.location}"):
                self._add_to_catalog(model)
        return new

    def _write_document(self, repo: str, tag: str, media_type: str, data: bytes) -> None:
        self.http.put_bytes(repo, EMPTY_BLOB)
        digest = self.http.put_bytes(repo, data)
        layer = {"mediaType": media_type, "digest": digest, "size": len(data)}
        self.http.put_manifest(repo, tag, manifest_body(_manifest(media_type, [layer], {})))

    def _add_to_catalog(self, model: str) -> None:
        with self._mutex(self.base, f"the catalog of {self.location}"):
            models = self.models()
            if model not in models:
                self._write_document(
                    self.base, "catalog", "application/json", json.dumps(sorted({*models, model})).encode()
                )

    def _sync_version_tags(self, repo: str, index: ModelIndex, tags: set[str]) -> None:
        """Make the `vN` (and `vN-<kind>`) tags show what the committed index says, for `oras pull`.

        Runs after the index is written, so a tag never shows a version the index lacks; it
        pushes only the tags that are missing (a dead writer's unfinished work included) and
        deletes those of versions the history deleted. A tag that exists is never pushed again."""
        wanted = {tag: body for version in index.versions.values() for tag, body in version_manifests(version).items()}
        for tag, body in sorted(wanted.items()):
            if tag not in tags:
                with self.http.step(f"tagging {self.host}/{repo}:{tag}"):
                    self.http.put_bytes(repo, EMPTY_BLOB)
                    self.http.put_manifest(repo, tag, body)
        deleted = {event.version for event in index.history if event.action == "delete"}
        for tag in sorted(tags - set(wanted)):
            found = VERSION_TAG.fullmatch(tag)
            if found and int(found.group(1)) in deleted:  # not a left-over `vN`: that one keeps its number
                with self.http.step(f"deleting the tag {self.host}/{repo}:{tag} of a deleted version"):
                    self.http.delete_tag(repo, tag)

    # --- the mutex ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mutex(self, repo: str, what: str) -> Iterator[tuple[float, list[str]]]:
        """Hold the writers' mutex on `repo`; yields when it was taken and the tags seen then."""
        with self.http.step(f"claiming {what}"):
            mine, started, tags = self._claim(repo)
        try:
            yield started, tags
        except RegistryUnreachable:
            raise  # no cleanup to try: the claim's writer exits, which makes the claim stale
        except BaseException:
            with contextlib.suppress(RegistryError):
                self.http.delete_tag(repo, mine)  # best effort: the first failure is the one to name
            raise
        with self.http.step(f"releasing the claim {mine} on {what}"):
            self.http.delete_tag(repo, mine)

    def _claim(self, repo: str) -> tuple[str, float, list[str]]:
        waited_from = time.monotonic()
        delay = 0.02
        while True:
            mine = f"lock-{secrets.token_hex(8)}"
            self.http.put_bytes(repo, EMPTY_BLOB)
            self.http.put_manifest(repo, mine, manifest_body(_manifest(CLAIM_TYPE, [], claim_annotations(mine))))
            started = time.monotonic()
            tags = self.http.tags(repo)
            if not self._live_claims(repo, mine, tags):
                return mine, started, tags
            self.http.delete_tag(repo, mine)
            if time.monotonic() - waited_from > WAIT_LIMIT:
                raise RegistryError(f"gave up waiting for other writers of {self.host}/{repo}")
            time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not security
            delay = min(delay * 2, 1.0)

    def _live_claims(self, repo: str, mine: str, tags: list[str]) -> list[str]:
        live = []
        for tag in tags:
            if not tag.startswith("lock-") or tag == mine:
                continue
            found = self.http.get_manifest(repo, tag)
            if found is None:
                continue  # released meanwhile
            if is_stale(found[0].get("annotations", {})):
                with contextlib.suppress(RegistryError):
                    self.http.delete_tag(repo, tag)  # a writer that died; clean up after it
                continue
            live.append(tag)
        return live


def _index_bytes(index: ModelIndex) -> bytes:
    return json.dumps(index.model_dump(mode="json"), indent=2, sort_keys=True).encode()
