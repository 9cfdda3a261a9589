"""HTTP to an OCI distribution registry, with every call bounded.

oras-py retries each failed call five times with sleeps of 3, 5, 11, 29 and 83 s and sets no
timeout, so one unreachable registry held `register` for minutes. Here oras' own retry is
bypassed and the session gets urllib3's `Retry` (a few quick attempts) and a timeout on every
request, so a push that cannot succeed fails in about `attempts x timeout` seconds; the
caller names the step that failed (`step`), with the registry's answer.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..contract import REGISTRY_PASSWORD_ENV, REGISTRY_USERNAME_ENV
from ..errors import RegistryError
from .store import CHUNK, sha256_file

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_BLOB = b"{}"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
RETRY_STATUSES = (429, 500, 502, 503, 504)

# Why a manifest push is retried: when two writers upload the same blob at once, the
# reference registry (distribution, filesystem storage) rewrites the blob's link file in place,
# and a manifest checked in that instant sees the blob as unknown or its digest as invalid.
# The blob is there a moment later; a blob that is really missing fails every retry.
BLOB_RACE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)
BLOB_RACE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID", "BLOB_UNKNOWN"})


class RegistryUnreachable(RegistryError):
    """The registry gave no answer at all (refused, reset, timed out), after every attempt."""


class _Bounded(HTTPAdapter):
    """An adapter that gives every request a timeout (requests has no session-wide one)."""

    def __init__(self, timeout: float, retries: int) -> None:
        # Every method is retried: the registry calls made here are idempotent (a repeated
        # upload POST only opens a second, unused upload session). Retry-After is not obeyed:
        # a registry asking for an hour would hang the command again.
        policy = Retry(
            total=retries,
            backoff_factor=0.5,
            backoff_max=4.0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        super().__init__(max_retries=policy)
        self.timeout = timeout

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        timeout = self.timeout if timeout is None else timeout
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


def _client(host: str, insecure: bool, timeout: float, retries: int) -> Any:
    import oras.provider  # imported here: the local backend needs no HTTP stack

    class Client(oras.provider.Registry):  # type: ignore[misc]
        # oras' `do_request` without its retry decorator (see the module's docstring).
        do_request = inspect.unwrap(oras.provider.Registry.do_request)

    client = Client(host, insecure=insecure)
    adapter = _Bounded(timeout, retries)
    client.session.mount("http://", adapter)
    client.session.mount("https://", adapter)
    return client


def _reason(exc: requests.RequestException, timeout: float) -> str:
    """The short cause of a failed call: requests' own message repeats the whole URL and pool."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return found.group(0) if found else str(exc)[:200]


def _answer(response: requests.Response) -> str:
    return f"HTTP {response.status_code} {response.text[:200]}".strip()


def _blob_race(response: requests.Response) -> bool:
    """Whether a refused manifest push names only blob problems (see BLOB_RACE_RETRIES)."""
    if response.status_code != 400:
        return False
    try:
        codes = {error.get("code") for error in response.json().get("errors", [])}
    except (ValueError, AttributeError):
        return False
    return bool(codes) and codes <= BLOB_RACE_CODES


class OciHttp:
    """The registry's HTTP API, as the OCI store uses it; every failure is a `RegistryError`."""

    def __init__(self, host: str, *, insecure: bool, timeout: float, retries: int) -> None:
        self.host = host
        self.timeout = timeout
        self.attempts = retries + 1
        self.prefix = "http" if insecure else "https"
        self.client = _client(host, insecure, timeout, retries)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Name the step in any failure inside: `writing the index of iris to HOST/REPO: HTTP 503 ...`."""
        try:
            yield
        except RegistryError as exc:
            raise type(exc)(f"{what}: {exc}") from None

    def url(self, repo: str, path: str) -> str:
        return f"{self.prefix}://{self.host}/v2/{repo}/{path}"

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response: requests.Response = self.client.do_request(url, method, **kwargs)
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"the registry {self.host} did not answer ({self.attempts} attempts): {_reason(exc, self.timeout)}"
            ) from None
        if response.status_code in (401, 403):
            raise RegistryError(
                f"the registry {self.host} refused access ({response.status_code}); "
                f"set {REGISTRY_USERNAME_ENV} and {REGISTRY_PASSWORD_ENV}"
            )
        return response

    def put_bytes(self, repo: str, data: bytes) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.upload(repo, path)[0]

    def upload(self, repo: str, path: Path) -> tuple[str, int]:
        with open(path, "rb") as handle:
            digest, size = sha256_file(handle)
        head = self.request("HEAD", self.url(repo, f"blobs/{digest}"))
        if head.status_code == 200:
            return digest, size
        import oras.container

        container = oras.container.Container(f"{self.host}/{repo}")
        try:
            response = self.client.upload_blob(
                str(path), container, {"digest": digest, "size": size}, do_chunked=size > 64 * 2**20
            )
        except requests.RequestException as exc:
            raise RegistryError(f"uploading failed: {_reason(exc, self.timeout)}") from None
        except ValueError as exc:  # oras: the registry's answer had no upload location
            raise RegistryError(f"uploading failed: {exc}") from None
        if response.status_code not in (200, 201, 202):
            raise RegistryError(f"uploading failed: {_answer(response)}")
        return digest, size

    def put_manifest(self, repo: str, tag: str, body: bytes) -> None:
        for delay in (*BLOB_RACE_RETRIES, None):
            response = self.request(
                "PUT", self.url(repo, f"manifests/{tag}"), data=body, headers={"Content-Type": MANIFEST}
            )
            if response.status_code in (200, 201):
                return
            if delay is None or not _blob_race(response):
                break
            time.sleep(delay)
        raise RegistryError(_answer(response))  # every caller names the step: `writing the index of ...: HTTP 503`

    def get_manifest(self, repo: str, tag: str) -> tuple[dict[str, Any], str] | None:
        response = self.request("GET", self.url(repo, f"manifests/{tag}"), headers={"Accept": MANIFEST})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"reading {self.host}/{repo}:{tag} failed: {_answer(response)}")
        return response.json(), response.headers.get("Docker-Content-Digest", "")

    def delete_tag(self, repo: str, tag: str) -> None:
        found = self.get_manifest(repo, tag)
        if found is None:
            return
        response = self.request("DELETE", self.url(repo, f"manifests/{found[1]}"))
        if response.status_code not in (200, 202, 404):
            raise RegistryError(
                f"deleting {self.host}/{repo}:{tag} failed: {_answer(response)}; the registry must allow deletes"
            )

    def tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        url: str | None = self.url(repo, "tags/list?n=1000")
        while url:
            response = self.request("GET", url)
            if response.status_code == 404:
                return tags
            if response.status_code != 200:
                raise RegistryError(f"listing {self.host}/{repo} failed: {_answer(response)}")
            tags += response.json().get("tags") or []
            link = response.links.get("next", {}).get("url")
            url = f"{self.prefix}://{self.host}{link}" if link else None
        return tags

    def blob_chunks(self, repo: str, digest: str) -> Iterator[bytes]:
        response = self.request("GET", self.url(repo, f"blobs/{digest}"), stream=True)
        if response.status_code == 404:
            raise RegistryError(f"blob {digest} is missing from {self.host}/{repo}")
        if response.status_code != 200:
            raise RegistryError(f"reading blob {digest} failed: {_answer(response)}")
        try:
            yield from response.iter_content(CHUNK)
        except requests.RequestException as exc:
            raise RegistryError(f"reading blob {digest} failed: {_reason(exc, self.timeout)}") from None


def manifest_body(manifest: dict[str, Any]) -> bytes:
    """A manifest's bytes: the same record gives the same bytes, so the same digest."""
    return json.dumps(manifest, sort_keys=True).encode()
