"""The registry's rules, once for every backend.

Versions are numbered 1, 2, 3 ... per model and never renumbered or reused; the bytes under
a version never change (content-addressed, verified on every read); registering the same
bytes again returns the existing version; aliases and tags move, and every move is recorded
in the history; a guarded alias (`production`) never points at a rejected version; a version
still deployed, or still named by an alias, cannot be deleted.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..spec.models import Framework
from .records import Artifact, Event, Lineage, ModelIndex, Status, Version
from .refs import Ref, check_alias, check_name
from .store import Store

GUARDED_ALIASES = frozenset({"production"})


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def lineage_from_environment(source: Path, env: Mapping[str, str]) -> dict[str, str | None]:
    """Where a registration came from: the git commit and CI run when they can be found."""
    commit = env.get("GITHUB_SHA") or _git_head(source.parent)
    repository = env.get("GITHUB_REPOSITORY")
    run = None
    if env.get("GITHUB_RUN_ID") and repository:
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run = f"{server}/{repository}/actions/runs/{env['GITHUB_RUN_ID']}"
    try:
        user = env.get("GITHUB_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {"git_commit": commit, "git_repository": repository, "ci_run": run, "user": user}


def _git_head(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    head = out.stdout.strip()
    return head if out.returncode == 0 and len(head) == 40 else None


class Registry:
    def __init__(self, store: Store, *, clock: Callable[[], str] = now, env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.env = os.environ if env is None else env

    # --- reading -------------------------------------------------------------------------

    def models(self) -> list[str]:
        return self.store.models()

    def index(self, model: str) -> ModelIndex:
        found = self.store.read_index(check_name(model))
        if found is None:
            known = ", ".join(self.models()) or "none yet"
            raise RegistryError(f"no model named {model!r} in {self.store.location} (models: {known})")
        return found

    def resolve(self, ref: Ref) -> Version:
        return _select(self.index(ref.model), ref)

    # --- writing -------------------------------------------------------------------------

    def register(
        self,
        model: str,
        file: Path,
        framework: Framework,
        *,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        signature: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> tuple[Version, bool]:
        """Store `file` as the next version of `model`; (version, True if it is new)."""
        check_name(model)
        digest, size = self.store.put_blob(model, file)  # outside the lock: uploads may be slow
        created: list[bool] = []
        when = self.clock()
        lineage = Lineage(
            source=source or str(file), filename=file.name, created=when, **lineage_from_environment(file, self.env)
        )

        def change(index: ModelIndex | None) -> ModelIndex:
            index = index or ModelIndex(model=model)
            existing = index.by_digest(digest)
            if existing is not None:
                return index
            number = index.next_version
            version = Version(
                model=model,
                version=number,
                digest=digest,
                size=size,
                framework=framework,
                lineage=lineage,
                signature=signature,
                metrics=dict(metrics or {}),
                tags=dict(tags or {}),
            )
            created.append(True)
            return _log(
                index.model_copy(update={"next_version": number + 1, "versions": {**index.versions, number: version}}),
                Event(time=when, action="register", version=number, detail={"digest": digest}),
            )

        index = self.store.update_index(model, change)
        assert index is not None
        version = index.by_digest(digest)
        assert version is not None
        return version, bool(created)

    def tag(self, ref: Ref, set_tags: Mapping[str, str], unset: tuple[str, ...] = ()) -> Version:
        def change(version: Version) -> tuple[Version, list[Event]]:
            tags = {k: v for k, v in {**version.tags, **set_tags}.items() if k not in unset}
            events = (
                [Event(time=self.clock(), action="tag", version=version.version, detail={"set": dict(set_tags)})]
                if set_tags
                else []
            )
            if unset:
                events.append(
                    Event(time=self.clock(), action="untag", version=version.version, detail={"unset": list(unset)})
                )
            return version.model_copy(update={"tags": tags}), events

        return self._change_version(ref, change)

    def set_status(self, ref: Ref, status: Status, detail: Mapping[str, Any]) -> Version:
        def change(version: Version) -> tuple[Version, list[Event]]:
            return version.model_copy(update={"status": status}), [
                Event(time=self.clock(), action="status", version=version.version, detail={"status": status, **detail})
            ]

        return self._change_version(ref, change)

    def link(self, ref: Ref, kind: str, file: Path, facts: Mapping[str, Any]) -> Artifact:
        """Store a derived file (e.g. the ONNX conversion) as an artifact of the version."""
        digest, size = self.store.put_blob(ref.model, file)
        target = self.resolve(ref)
        artifact = Artifact(
            digest=digest,
            size=size,
            filename=file.name,
            derived_from=target.digest,
            created=self.clock(),
            facts=dict(facts),
        )

        def change(version: Version) -> tuple[Version, list[Event]]:
            return version.model_copy(update={"artifacts": {**version.artifacts, kind: artifact}}), [
                Event(
                    time=artifact.created,
                    action="link",
                    version=version.version,
                    detail={"kind": kind, "digest": digest, "derivedFrom": version.digest},
                )
            ]

        self._change_version(Ref(ref.model, target.version), change)
        return artifact

    def alias(self, ref: Ref, alias: str) -> Version:
        """Point `alias` at the version `ref` names; the move is recorded in the history."""
        check_alias(alias)
        chosen: list[Version] = []

        def change(index: ModelIndex | None) -> ModelIndex:
            index = _existing(index, ref.model)
            version = _select(index, ref)
            if alias in GUARDED_ALIASES and version.status == "rejected":
                raise RegistryError(
                    f"{ref.model}@{version.version} was rejected by validation; "
                    f"the guarded alias {alias!r} cannot point at it"
                )
            chosen.append(version)
            previous = index.aliases.get(alias)
            if previous == version.version:
                return index
            return _log(
                index.model_copy(update={"aliases": {**index.aliases, alias: version.version}}),
                Event(
                    time=self.clock(),
                    action="alias",
                    version=version.version,
                    detail={"alias": alias, "from": previous},
                ),
            )

        self.store.update_index(ref.model, change)
        return chosen[0]

    def unalias(self, model: str, alias: str) -> None:
        def change(index: ModelIndex | None) -> ModelIndex:
            index = _existing(index, model)
            if alias not in index.aliases:
                raise RegistryError(f"{model} has no alias {alias!r}")
            aliases = {k: v for k, v in index.aliases.items() if k != alias}
            return _log(
                index.model_copy(update={"aliases": aliases}),
                Event(time=self.clock(), action="unalias", version=index.aliases[alias], detail={"alias": alias}),
            )

        self.store.update_index(model, change)

    def delete(self, ref: Ref, in_use: Callable[[Version], list[str]]) -> Version:
        """Delete a version; `in_use` names the deployments that still use it (then refuse)."""
        removed: list[Version] = []

        def change(index: ModelIndex | None) -> ModelIndex:
            index = _existing(index, ref.model)
            version = _select(index, ref)
            users = in_use(version)
            if users:
                raise RegistryError(
                    f"{ref.model}@{version.version} is still deployed; remove it from these first: " + "; ".join(users)
                )
            aliases = sorted(a for a, n in index.aliases.items() if n == version.version)
            if aliases:
                raise RegistryError(
                    f"{ref.model}@{version.version} is named by alias(es) {', '.join(aliases)}; move them first"
                )
            removed.append(version)
            versions = {n: v for n, v in index.versions.items() if n != version.version}
            return _log(
                index.model_copy(update={"versions": versions}),
                Event(time=self.clock(), action="delete", version=version.version, detail={"digest": version.digest}),
            )

        self.store.update_index(ref.model, change)
        return removed[0]

    def pull(self, ref: Ref, dest: Path, artifact: str | None = None) -> Version:
        version = self.resolve(ref)
        if artifact is None:
            self.store.fetch_blob(ref.model, version.digest, dest)
            return version
        linked = version.artifacts.get(artifact)
        if linked is None:
            have = ", ".join(sorted(version.artifacts)) or "none"
            raise RegistryError(f"{ref.model}@{version.version} has no {artifact!r} artifact (artifacts: {have})")
        self.store.fetch_blob(ref.model, linked.digest, dest)
        return version

    def _change_version(self, ref: Ref, change: Callable[[Version], tuple[Version, list[Event]]]) -> Version:
        result: list[Version] = []

        def apply(index: ModelIndex | None) -> ModelIndex:
            index = _existing(index, ref.model)
            new, events = change(_select(index, ref))
            result.append(new)
            index = index.model_copy(update={"versions": {**index.versions, new.version: new}})
            return _log(index, *events)

        self.store.update_index(ref.model, apply)
        return result[0]


def _existing(index: ModelIndex | None, model: str) -> ModelIndex:
    if index is None:
        raise RegistryError(f"no model named {model!r} in the registry")
    return index


def _log(index: ModelIndex, *events: Event) -> ModelIndex:
    return index.model_copy(update={"history": (*index.history, *events)})


def _select(index: ModelIndex, ref: Ref) -> Version:
    selector = ref.selector
    if not index.versions:
        raise RegistryError(f"{ref.model} has no versions left")
    if selector is None or selector == "latest":
        return index.versions[max(index.versions)]
    if isinstance(selector, int):
        found = index.versions.get(selector)
        known = ", ".join(str(n) for n in sorted(index.versions))
        if found is None:
            raise RegistryError(f"{ref.model}@{selector} does not exist (versions: {known})")
        return found
    if selector.startswith("sha256:"):
        by_digest = index.by_digest(selector)
        if by_digest is None:
            raise RegistryError(f"no version of {ref.model} has digest {selector}")
        return by_digest
    number = index.aliases.get(selector)
    if number is None or number not in index.versions:
        aliases = ", ".join(sorted(index.aliases)) or "none"
        raise RegistryError(f"{ref.model} has no alias {selector!r} (aliases: {aliases})")
    return index.versions[number]
