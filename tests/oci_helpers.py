"""What the OCI fault tests share: a registry process they may kill, a proxy that fails chosen
calls, and the registry's tags read straight from its HTTP API (not through mlops-iac)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .conftest import free_port, require, wait_http

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
VERSION = re.compile(r"v[0-9]+")
DROP = -1  # a Fault's answer that closes the connection without a response


class RegistryProcess:
    """Debian's docker-registry on a port of its own, which a test may kill and start again."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            require("docker-registry (apt-get install docker-registry)")
        self.binary = str(binary)
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        (folder / "config.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.address}'}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.folder / "log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self.folder / "config.yml")], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_http(f"http://{self.address}/v2/")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


# (method, path) -> an HTTP status to answer instead of the registry, DROP, or None to forward.
Fault = Callable[[str, str], int | None]


class FaultProxy:
    """An HTTP proxy in front of a registry that fails the calls `fault` picks; it keeps the
    client's Host header, so the registry's upload locations point back at the proxy."""

    def __init__(self, upstream: str, fault: Fault) -> None:
        self.fault = fault
        self.seen: list[tuple[str, str]] = []
        host, port = upstream.split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.seen.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                status = proxy.fault(self.command, self.path)
                if status == DROP:
                    self.close_connection = True
                    return
                if status is not None:
                    self._answer(status, {"Content-Type": "application/json"}, b'{"errors":[{"code":"UNAVAILABLE"}]}')
                    return
                upstream_conn = http.client.HTTPConnection(host, int(port), timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                skip = {"connection", "transfer-encoding", "content-length"}
                self._answer(response.status, {k: v for k, v in response.getheaders() if k.lower() not in skip}, data)
                upstream_conn.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def count(self, method: str, path_end: str) -> int:
        return sum(1 for m, p in self.seen if m == method and p.split("?")[0].endswith(path_end))


@contextmanager
def fault_proxy(upstream: str, fault: Fault) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, fault)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        thread.join(10)


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers={"Accept": MANIFEST})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def tags(address: str, repo: str) -> list[str]:
    status, _, body = _get(f"http://{address}/v2/{repo}/tags/list?n=1000")
    return [] if status == 404 else list(json.loads(body).get("tags") or [])


def manifest(address: str, repo: str, tag: str) -> tuple[str, dict[str, Any]]:
    """(digest, manifest) of a tag, as the registry serves it."""
    status, headers, body = _get(f"http://{address}/v2/{repo}/manifests/{tag}")
    assert status == 200, f"{repo}:{tag}: HTTP {status}"
    return headers["Docker-Content-Digest"], json.loads(body)


def version_tags(address: str, repo: str) -> dict[str, str]:
    """`vN` tag -> the digest of the manifest it points at."""
    return {tag: manifest(address, repo, tag)[0] for tag in tags(address, repo) if VERSION.fullmatch(tag)}
