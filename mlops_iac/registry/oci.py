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
`CLAIM_TTL` seconds and is then ignored; a holder that has taken half of that time aborts
before writing. This needs read-after-write consistent tag listing (a single registry, or
one with consistent storage) and tag deletion enabled (GHCR, ACR, ECR, Harbor and
`registry:2` with `delete: enabled` have both).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from pydantic import ValidationError

from ..contract import REGISTRY_PASSWORD_ENV, REGISTRY_USERNAME_ENV
from ..errors import RegistryError
from .records import ModelIndex, Version
from .refs import check_name
from .store import CHUNK, IndexChange, copy_verified, sha256_file

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
MODEL_TYPE = "application/vnd.mlops-iac.model.v1"
INDEX_TYPE = "application/vnd.mlops-iac.index.v1+json"
CLAIM_TYPE = "application/vnd.mlops-iac.claim.v1"
CLAIM_TTL = 120.0
WAIT_LIMIT = 300.0
ANNOTATION = "dev.mlops-iac"


# Why a manifest push is retried: when two writers upload the same blob at once, the
# reference registry (distribution, filesystem storage) rewrites the blob's link file in place,
# and a manifest checked in that instant sees the blob as unknown or its digest as invalid.
# The blob is there a moment later; a blob that is really missing fails every retry.
BLOB_RACE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)
BLOB_RACE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID", "BLOB_UNKNOWN"})


def _blob_race(response: requests.Response) -> bool:
    """Whether a refused manifest push names only blob problems (see BLOB_RACE_RETRIES)."""
    if response.status_code != 400:
        return False
    try:
        codes = {error.get("code") for error in response.json().get("errors", [])}
    except (ValueError, AttributeError):
        return False
    return bool(codes) and codes <= BLOB_RACE_CODES


def _manifest(artifact_type: str, layers: list[dict[str, Any]], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": len(EMPTY_BLOB)},
        "layers": layers,
        "annotations": dict(sorted(annotations.items())),
    }


class OciStore:
    def __init__(self, repository: str, *, insecure: bool = False, env: Mapping[str, str] | None = None) -> None:
        import oras.provider  # imported here: the local backend needs no HTTP stack

        env = os.environ if env is None else env
        self.host, _, self.base = repository.partition("/")
        self.location = repository
        self.client = oras.provider.Registry(self.host, insecure=insecure)
        self.prefix = "http" if insecure else "https"
        user, password = env.get(REGISTRY_USERNAME_ENV), env.get(REGISTRY_PASSWORD_ENV)
        if user and password:
            self.client.login(user, password)

    # --- HTTP --------------------------------------------------------------------------------

    def _url(self, repo: str, path: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repo}/{path}"

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response: requests.Response = self.client.do_request(url, method, **kwargs)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the registry {self.host}: {exc}") from None
        if response.status_code in (401, 403):
            raise RegistryError(
                f"the registry {self.host} refused access ({response.status_code}); "
                f"set {REGISTRY_USERNAME_ENV} and {REGISTRY_PASSWORD_ENV}"
            )
        return response

    def _repo(self, model: str) -> str:
        return f"{self.base}/{check_name(model)}"

    def _put_bytes(self, repo: str, data: bytes) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self._upload(repo, path)[0]

    def _upload(self, repo: str, path: Path) -> tuple[str, int]:
        with open(path, "rb") as handle:
            digest, size = sha256_file(handle)
        head = self._request("HEAD", self._url(repo, f"blobs/{digest}"))
        if head.status_code == 200:
            return digest, size
        import oras.container

        container = oras.container.Container(f"{self.host}/{repo}")
        try:
            response = self.client.upload_blob(
                str(path), container, {"digest": digest, "size": size}, do_chunked=size > 64 * 2**20
            )
        except requests.RequestException as exc:
            raise RegistryError(f"uploading to {self.host}/{repo} failed: {exc}") from None
        if response.status_code not in (200, 201, 202):
            raise RegistryError(f"uploading to {self.host}/{repo} failed: HTTP {response.status_code}")
        return digest, size

    def _put_manifest(self, repo: str, tag: str, manifest: dict[str, Any]) -> None:
        body = json.dumps(manifest, sort_keys=True).encode()
        for delay in (*BLOB_RACE_RETRIES, None):
            response = self._request(
                "PUT", self._url(repo, f"manifests/{tag}"), data=body, headers={"Content-Type": MANIFEST}
            )
            if response.status_code in (200, 201):
                return
            if delay is None or not _blob_race(response):
                break
            time.sleep(delay)
        raise RegistryError(
            f"pushing {self.host}/{repo}:{tag} failed: HTTP {response.status_code} {response.text[:200]}"
        )

    def _get_manifest(self, repo: str, tag: str) -> tuple[dict[str, Any], str] | None:
        response = self._request("GET", self._url(repo, f"manifests/{tag}"), headers={"Accept": MANIFEST})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"reading {self.host}/{repo}:{tag} failed: HTTP {response.status_code}")
        return response.json(), response.headers.get("Docker-Content-Digest", "")

    def _delete_tag(self, repo: str, tag: str) -> None:
        found = self._get_manifest(repo, tag)
        if found is None:
            return
        digest = found[1]
        response = self._request("DELETE", self._url(repo, f"manifests/{digest}"))
        if response.status_code not in (200, 202, 404):
            raise RegistryError(
                f"deleting {self.host}/{repo}:{tag} failed: HTTP "
                f"{response.status_code}; the registry must allow deletes"
            )

    def _tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        url: str | None = self._url(repo, "tags/list?n=1000")
        while url:
            response = self._request("GET", url)
            if response.status_code == 404:
                return tags
            if response.status_code != 200:
                raise RegistryError(f"listing {self.host}/{repo} failed: HTTP {response.status_code}")
            tags += response.json().get("tags") or []
            link = response.links.get("next", {}).get("url")
            url = f"{self.prefix}://{self.host}{link}" if link else None
        return tags

    def _blob_chunks(self, repo: str, digest: str) -> Iterator[bytes]:
        response = self._request("GET", self._url(repo, f"blobs/{digest}"), stream=True)
        if response.status_code == 404:
            raise RegistryError(f"blob {digest} is missing from {self.host}/{repo}")
        if response.status_code != 200:
            raise RegistryError(f"reading blob {digest} failed: HTTP {response.status_code}")
        yield from response.iter_content(CHUNK)

    # --- Store -------------------------------------------------------------------------------

    def put_blob(self, model: str, source: Path) -> tuple[str, int]:
        return self._upload(self._repo(model), source)

    def fetch_blob(self, model: str, digest: str, dest: Path) -> None:
        copy_verified(self._blob_chunks(self._repo(model), digest), digest, dest, f"blob {digest}")

    def models(self) -> list[str]:
        found = self._get_manifest(self.base, "catalog")
        if found is None:
            return []
        return sorted(json.loads(self._read_layer(self.base, found[0])))

    def read_index(self, model: str) -> ModelIndex | None:
        repo = self._repo(model)
        found = self._get_manifest(repo, "index")
        if found is None:
            return None
        try:
            return ModelIndex.model_validate_json(self._read_layer(repo, found[0]))
        except ValidationError as exc:
            raise RegistryError(f"{self.host}/{repo}:index is damaged: {exc.errors()[0]['msg']}") from None

    def _read_layer(self, repo: str, manifest: dict[str, Any]) -> bytes:
        layer = manifest["layers"][0]
        data = b"".join(self._blob_chunks(repo, layer["digest"]))
        import hashlib

        if "sha256:" + hashlib.sha256(data).hexdigest() != layer["digest"]:
            raise RegistryError(f"{self.host}/{repo}: blob {layer['digest']} is corrupted")
        return data

    def update_index(self, model: str, change: IndexChange) -> ModelIndex | None:
        repo = self._repo(model)
        with self._mutex(repo) as started:
            current = self.read_index(model)
            new = change(current)
            if new is None or new == current:
                return new
            if time.monotonic() - started > CLAIM_TTL / 2:
                raise RegistryError(
                    f"the change to {self.host}/{repo} took too long to commit safely; nothing was written, try again"
                )
            self._sync_version_tags(repo, current, new)
            self._write_document(
                repo, "index", INDEX_TYPE, json.dumps(new.model_dump(mode="json"), indent=2, sort_keys=True).encode()
            )
        if current is None:
            self._add_to_catalog(model)
        return new

    def _write_document(self, repo: str, tag: str, media_type: str, data: bytes) -> None:
        self._put_bytes(repo, EMPTY_BLOB)
        digest = self._put_bytes(repo, data)
        layer = {"mediaType": media_type, "digest": digest, "size": len(data)}
        self._put_manifest(repo, tag, _manifest(media_type, [layer], {}))

    def _add_to_catalog(self, model: str) -> None:
        with self._mutex(self.base):
            models = self.models()
            if model not in models:
                self._write_document(
                    self.base, "catalog", "application/json", json.dumps(sorted({*models, model})).encode()
                )

    def _sync_version_tags(self, repo: str, old: ModelIndex | None, new: ModelIndex) -> None:
        """Keep `v<N>` (and `v<N>-<kind>`) tags in step with the index, for `oras pull`."""
        before = old.versions if old else {}
        for number, version in sorted(new.versions.items()):
            if before.get(number) != version:
                self._push_version(repo, version)
        for number in sorted(set(before) - set(new.versions)):
            for tag in (f"v{number}", *(f"v{number}-{k}" for k in before[number].artifacts)):
                self._delete_tag(repo, tag)

    def _push_version(self, repo: str, version: Version) -> None:
        self._put_bytes(repo, EMPTY_BLOB)
        notes = {
            f"{ANNOTATION}.model": version.model,
            f"{ANNOTATION}.version": str(version.version),
            f"{ANNOTATION}.framework": version.framework,
            "org.opencontainers.image.created": version.lineage.created,
        }
        if version.lineage.git_commit:
            notes["org.opencontainers.image.revision"] = version.lineage.git_commit
        layer = {
            "mediaType": "application/octet-stream",
            "digest": version.digest,
            "size": version.size,
            "annotations": {"org.opencontainers.image.title": version.lineage.filename},
        }
        self._put_manifest(repo, f"v{version.version}", _manifest(MODEL_TYPE, [layer], notes))
        for kind, artifact in sorted(version.artifacts.items()):
            linked = {
                "mediaType": "application/octet-stream",
                "digest": artifact.digest,
                "size": artifact.size,
                "annotations": {"org.opencontainers.image.title": artifact.filename},
            }
            self._put_manifest(
                repo,
                f"v{version.version}-{kind}",
                _manifest(MODEL_TYPE, [linked], {**notes, f"{ANNOTATION}.derived-from": artifact.derived_from}),
            )

    # --- the mutex ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mutex(self, repo: str) -> Iterator[float]:
        waited_from = time.monotonic()
        delay = 0.02
        while True:
            mine = f"lock-{secrets.token_hex(8)}"
            self._put_bytes(repo, EMPTY_BLOB)
            self._put_manifest(
                repo,
                mine,
                _manifest(
                    CLAIM_TYPE,
                    [],
                    {
                        f"{ANNOTATION}.claimed": datetime.now(UTC).isoformat(),
                        f"{ANNOTATION}.holder": f"{socket.gethostname()}:{os.getpid()}:{mine}",
                    },
                ),
            )
            started = time.monotonic()
            if not self._live_claims(repo, mine):
                break
            self._delete_tag(repo, mine)
            if time.monotonic() - waited_from > WAIT_LIMIT:
                raise RegistryError(f"gave up waiting for other writers of {self.host}/{repo}")
            time.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not security
            delay = min(delay * 2, 1.0)
        try:
            yield started
        finally:
            self._delete_tag(repo, mine)

    def _live_claims(self, repo: str, mine: str) -> list[str]:
        live = []
        for tag in self._tags(repo):
            if not tag.startswith("lock-") or tag == mine:
                continue
            found = self._get_manifest(repo, tag)
            if found is None:
                continue  # released meanwhile
            claimed = found[0].get("annotations", {}).get(f"{ANNOTATION}.claimed", "")
            try:
                age = (datetime.now(UTC) - datetime.fromisoformat(claimed)).total_seconds()
            except ValueError:
                age = CLAIM_TTL + 1
            if age > CLAIM_TTL:
                with contextlib.suppress(RegistryError):
                    self._delete_tag(repo, tag)  # a writer that died; clean up after it
                continue
            live.append(tag)
        return live
