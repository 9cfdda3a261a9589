"""What we deploy, run on a real Docker engine: a rendered pod template, or the arguments the
Docker component gives `pulumi_docker.Container`, turned into the equivalent `docker run`.

There is no Kubernetes API server in CI, but a pod's container is a container: the image, its
command and args, the environment from ConfigMaps and Secrets, the user, the read-only root,
the dropped capabilities, the volumes and the CPU and memory limits all have a `docker run`
flag with the same effect. Every field is translated or refused: an unknown field raises
`Unsupported`, so these tests cannot silently drift from the manifests. Fields that only
matter to the scheduler or the API server (labels, spreading, service accounts) are listed
as accepted on purpose, each with the reason.

The container shares the host's network (the CI engine has no bridge), so it listens on its
rendered port on 127.0.0.1; the tests run one container at a time for that reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Object = dict[str, Any]


class Unsupported(Exception):
    """A field the translation does not know: add it here, with its docker equivalent."""


def _check(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise Unsupported(
            f"{where}: no docker equivalent for {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )


# --- quantities ------------------------------------------------------------------------------

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (`128Mi`, `1G`, `134217728`) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(quantity))
    if match is None:
        raise Unsupported(f"memory quantity {quantity!r}")
    number, unit = match.groups()
    return int(float(number) * (_BINARY.get(unit) or _DECIMAL[unit]))


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity (`500m`, `1`, `"0.5"`) in cores."""
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)


# --- what a run needs besides argv -----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A kubelet HTTP probe with Kubernetes' defaults filled in."""

    path: str
    port: int
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def check(self, headers: Mapping[str, str] | None = None) -> bool:
        """One probe as the kubelet does it: 200-399 within the timeout is a success."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{self.path}", headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bool(200 <= response.status < 400)
        except (urllib.error.HTTPError, OSError):
            return False


@dataclass(frozen=True)
class ContainerRun:
    """The `docker run` of one container, and what the tests check against it."""

    name: str
    argv: tuple[str, ...]  # after `docker`
    ports: Mapping[str, int]  # name (or str(number)) -> port on 127.0.0.1
    env: Mapping[str, str]
    mounts: Mapping[str, str]  # mount path -> volume kind ("emptyDir", "configMap", ...)
    memory_limit: int | None
    cpu_limit: float | None
    grace_seconds: float
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    pre_stop: tuple[str, ...] | None = None  # a command run inside the container before SIGTERM
    healthcheck: bool = False  # the engine's own HEALTHCHECK is on (the Docker component)
    files: tuple[Path, ...] = field(default=(), compare=False)  # host folders made for volumes
    # configMap/secret volumes: mount path -> the host folder holding their files
    file_volumes: Mapping[str, Path] = field(default_factory=dict, compare=False)
    # emptyDirs on the node's disk: mount path -> (host folder, sizeLimit the kubelet evicts at)
    disk_volumes: Mapping[str, tuple[Path, int | None]] = field(default_factory=dict, compare=False)

    def start(self) -> str:
        done = subprocess.run(["docker", *self.argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"docker {shlex.join(self.argv[:8])} ... failed: {done.stderr}")
        return done.stdout.strip()


# --- Kubernetes pod template -----------------------------------------------------------------

# Accepted without a docker flag, because they only concern the API server or the scheduler.
_POD_NO_OP = {
    "serviceAccountName",  # an identity for the API server; the token is not mounted (checked below)
    "topologySpreadConstraints",  # where replicas land: one engine, one node
    "affinity",
    "nodeSelector",
    "tolerations",
    "priorityClassName",  # scheduling only
}
_POD = _POD_NO_OP | {
    "automountServiceAccountToken",
    "securityContext",
    "terminationGracePeriodSeconds",
    "containers",
    "volumes",
}
_POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "seccompProfile"}
_CONTAINER = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "ports",
    "env",
    "envFrom",
    "resources",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "securityContext",
    "volumeMounts",
    "lifecycle",
    "terminationMessagePolicy",
    "workingDir",
}
_SECURITY = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "capabilities",
    "seccompProfile",
    "privileged",
}
_PROBE = {"httpGet", "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"}


def find(objects: list[Object], kind: str, name: str) -> Object:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise Unsupported(f"{kind} {name}: {len(matches)} rendered objects (the pod refers to exactly one)")
    return matches[0]


def secret_data(secret: Object) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


class _Pod:
    """The translation of one Deployment's pod template; one instance per translation."""

    def __init__(self, deployment: Object, objects: list[Object], image: str, name: str, workdir: Path) -> None:
        self.objects, self.image, self.name, self.workdir = objects, image, name, workdir
        self.pod = deployment["spec"]["template"]["spec"]
        self.where = f"Deployment {deployment['metadata']['name']}: spec.template.spec"
        self.flags: list[str] = []
        self.files: list[Path] = []
        self.sizes: dict[str, tuple[Path, int | None]] = {}
        self.file_volumes: dict[str, Path] = {}

    def translate(self) -> ContainerRun:
        _check(self.pod, _POD, self.where)
        if self.pod.get("automountServiceAccountToken", True):
            raise Unsupported(f"{self.where}: a mounted service account token needs an API server")
        if len(self.pod["containers"]) != 1:
            raise Unsupported(f"{self.where}.containers: one container per pod is what this translates")
        container = self.pod["containers"][0]
        where = f"{self.where}.containers[0]"
        _check(container, _CONTAINER, where)
        if container.get("terminationMessagePolicy", "File") != "File" or "workingDir" in container:
            raise Unsupported(f"{where}: terminationMessagePolicy/workingDir other than the defaults")
        ports = self._ports(container, where)
        env = self._env(container, where)
        mounts = self._volumes(container, where)
        memory, cpu = self._resources(container.get("resources") or {}, f"{where}.resources")
        self._security(container.get("securityContext") or {}, f"{where}.securityContext")
        command, args = container.get("command"), container.get("args")
        for arg in [*(command or []), *(args or [])]:
            if "$(" in arg:
                raise Unsupported(f"{where}: $(VAR) expansion in command/args")
        entry = ["--entrypoint", command[0]] if command else []
        # Kubernetes ignores the image's HEALTHCHECK: only the probes count.
        argv = [
            "run",
            "-d",
            "--name",
            self.name,
            "--network",
            "host",
            "--no-healthcheck",
            *entry,
            *self.flags,
            *[f for k, v in env.items() for f in ("-e", f"{k}={v}")],
            self.image,
            *(command[1:] if command else []),
            *(args if args is not None else []),
        ]
        return ContainerRun(
            name=self.name,
            argv=tuple(argv),
            ports=ports,
            env=env,
            mounts=mounts,
            memory_limit=memory,
            cpu_limit=cpu,
            grace_seconds=float(self.pod.get("terminationGracePeriodSeconds", 30)),
            startup=self._probe(container, "startupProbe", ports, where),
            readiness=self._probe(container, "readinessProbe", ports, where),
            liveness=self._probe(container, "livenessProbe", ports, where),
            pre_stop=self._pre_stop(container.get("lifecycle"), f"{where}.lifecycle"),
            files=tuple(self.files),
            disk_volumes=dict(self.sizes),
            file_volumes=dict(self.file_volumes),
        )

    def _ports(self, container: Object, where: str) -> dict[str, int]:
        ports: dict[str, int] = {}
        for i, port in enumerate(container.get("ports") or []):
            _check(port, {"name", "containerPort", "protocol"}, f"{where}.ports[{i}]")
            if port.get("protocol", "TCP") != "TCP":
                raise Unsupported(f"{where}.ports[{i}].protocol: {port['protocol']}")
            ports[port.get("name", str(port["containerPort"]))] = ports[str(port["containerPort"])] = int(
                port["containerPort"]
            )
        return ports

    def _env(self, container: Object, where: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for i, source in enumerate(container.get("envFrom") or []):
            _check(source, {"configMapRef", "secretRef", "prefix"}, f"{where}.envFrom[{i}]")
            if "configMapRef" in source:
                values = find(self.objects, "ConfigMap", source["configMapRef"]["name"]).get("data") or {}
            else:
                values = secret_data(find(self.objects, "Secret", source["secretRef"]["name"]))
            env.update({source.get("prefix", "") + k: v for k, v in values.items()})
        for i, var in enumerate(container.get("env") or []):  # env wins over envFrom, as in Kubernetes
            _check(var, {"name", "value", "valueFrom"}, f"{where}.env[{i}]")
            env[var["name"]] = (
                var["value"] if "value" in var else self._value_from(var["valueFrom"], f"{where}.env[{i}].valueFrom")
            )
        return env

    def _value_from(self, ref: Object, where: str) -> str:
        _check(ref, {"configMapKeyRef", "secretKeyRef"}, where)
        if "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            return str(find(self.objects, "ConfigMap", key["name"])["data"][key["key"]])
        key = ref["secretKeyRef"]
        return secret_data(find(self.objects, "Secret", key["name"]))[key["key"]]

    def _volumes(self, container: Object, where: str) -> dict[str, str]:
        volumes = {v["name"]: v for v in self.pod.get("volumes") or []}
        fs_group = (self.pod.get("securityContext") or {}).get("fsGroup")
        mounts: dict[str, str] = {}
        for i, mount in enumerate(container.get("volumeMounts") or []):
            _check(mount, {"name", "mountPath", "readOnly"}, f"{where}.volumeMounts[{i}]")
            volume, path = volumes[mount["name"]], mount["mountPath"]
            kinds = sorted(set(volume) - {"name"})
            if kinds == ["emptyDir"]:
                self.flags += self._empty_dir(
                    path, volume, fs_group, mount.get("readOnly", False), f"{self.where}.volumes[{mount['name']}]"
                )
            elif kinds in (["configMap"], ["secret"]):
                folder = self._files(volume, kinds[0], f"{self.where}.volumes[{mount['name']}]")
                self.file_volumes[path] = folder
                # Kubernetes mounts these read-only whatever the mount says.
                self.flags += ["-v", f"{folder}:{path}:ro"]
            else:
                raise Unsupported(f"{self.where}.volumes[{mount['name']}]: {kinds} (emptyDir, configMap, secret)")
            mounts[path] = kinds[0]
        unused = set(volumes) - {m["name"] for m in container.get("volumeMounts") or []}
        if unused:
            raise Unsupported(f"{self.where}.volumes: {sorted(unused)} mounted by no container")
        return mounts

    def _empty_dir(self, path: str, volume: Object, fs_group: int | None, read_only: bool, where: str) -> list[str]:
        """An emptyDir as the kubelet makes it: mode 0777 (setgid, group fsGroup, with an fsGroup),
        whatever the image has at that path. In memory: a tmpfs with the size limit; on the node's
        disk: a fresh host folder (the kubelet enforces its size limit by eviction: see `sizes`)."""
        empty = volume["emptyDir"]
        _check(empty, {"medium", "sizeLimit"}, f"{where}.emptyDir")
        mode = 0o2777 if fs_group is not None else 0o777
        if empty.get("medium", "") == "Memory":
            options = ["ro" if read_only else "rw", f"mode={mode:o}"]
            options += [f"gid={fs_group}"] if fs_group is not None else []
            options += [f"size={memory_bytes(empty['sizeLimit'])}"] if "sizeLimit" in empty else []
            # The tmpfs root takes the mode of the image's folder under it (the engine's copy-up),
            # unlike an emptyDir: the image's folder must then be writable too, or the test fails.
            return ["--tmpfs", f"{path}:{','.join(options)}"]
        if empty.get("medium", "") != "":
            raise Unsupported(f"{where}.emptyDir.medium: {empty['medium']}")
        folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-{volume['name']}-", dir=self.workdir))
        if fs_group is not None:
            os.chown(folder, -1, fs_group)
        folder.chmod(mode)
        self.files.append(folder)
        self.sizes[path] = (folder, memory_bytes(empty["sizeLimit"]) if "sizeLimit" in empty else None)
        return ["-v", f"{folder}:{path}{':ro' if read_only else ''}"]

    def _files(self, volume: Object, kind: str, where: str) -> Path:
        source = volume[kind]
        _check(source, {"name", "secretName", "items", "defaultMode", "optional"}, f"{where}.{kind}")
        if kind == "configMap":
            data = {k: str(v) for k, v in (find(self.objects, "ConfigMap", source["name"]).get("data") or {}).items()}
        else:
            data = secret_data(find(self.objects, "Secret", source["secretName"]))
        if "items" in source:
            data = {item["path"]: data[item["key"]] for item in source["items"]}
        folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-{volume['name']}-", dir=self.workdir))
        folder.chmod(0o755)
        for key, value in data.items():
            (folder / key).write_text(value)
            (folder / key).chmod(source.get("defaultMode", 0o644))
        self.files.append(folder)
        return folder

    def _resources(self, resources: Object, where: str) -> tuple[int | None, float | None]:
        _check(resources, {"requests", "limits"}, where)
        limits = resources.get("limits") or {}
        _check(limits, {"cpu", "memory"}, f"{where}.limits")  # a GPU is not in CI
        # Requests are what the scheduler reserves; a single engine has nothing to reserve.
        _check(resources.get("requests") or {}, {"cpu", "memory"}, f"{where}.requests")
        memory = memory_bytes(limits["memory"]) if "memory" in limits else None
        cpu = cpu_cores(limits["cpu"]) if "cpu" in limits else None
        if memory is not None:  # no swap, as on a Kubernetes node
            self.flags += ["--memory", str(memory), "--memory-swap", str(memory)]
        if cpu is not None:
            self.flags += ["--cpus", f"{cpu:g}"]
        return memory, cpu

    def _security(self, security: Object, where: str) -> None:
        pod = self.pod.get("securityContext") or {}
        _check(pod, _POD_SECURITY, f"{self.where}.securityContext")
        _check(security, _SECURITY, where)
        merged = {**pod, **security}  # the container's own settings win, as in Kubernetes
        user, group = merged.get("runAsUser"), merged.get("runAsGroup")
        if user is not None:
            self.flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if merged.get("runAsNonRoot") and (user is None or int(user) == 0):
            raise Unsupported(f"{where}: runAsNonRoot without a numeric non-zero runAsUser")
        for gid in [*(pod.get("supplementalGroups") or []), *([pod["fsGroup"]] if "fsGroup" in pod else [])]:
            self.flags += ["--group-add", str(gid)]
        if security.get("privileged"):
            raise Unsupported(f"{where}.privileged")
        if security.get("readOnlyRootFilesystem"):
            self.flags.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            self.flags += ["--security-opt", "no-new-privileges"]
        capabilities = security.get("capabilities") or {}
        _check(capabilities, {"drop", "add"}, f"{where}.capabilities")
        self.flags += [f for cap in capabilities.get("drop", []) for f in ("--cap-drop", cap)]
        self.flags += [f for cap in capabilities.get("add", []) for f in ("--cap-add", cap)]
        seccomp = merged.get("seccompProfile", {"type": "RuntimeDefault"})
        if seccomp != {"type": "RuntimeDefault"}:  # the engine's default profile is RuntimeDefault
            raise Unsupported(f"{where}.seccompProfile: {seccomp}")

    @staticmethod
    def _probe(container: Object, key: str, ports: Mapping[str, int], where: str) -> Probe | None:
        probe = container.get(key)
        if probe is None:
            return None
        _check(probe, _PROBE, f"{where}.{key}")
        get = probe["httpGet"]
        _check(get, {"path", "port", "scheme"}, f"{where}.{key}.httpGet")
        if get.get("scheme", "HTTP") != "HTTP":
            raise Unsupported(f"{where}.{key}.httpGet.scheme: {get['scheme']}")
        port = get["port"]
        return Probe(
            path=get.get("path", "/"),
            port=ports[str(port)] if str(port) in ports else int(port),
            initial_delay=probe.get("initialDelaySeconds", 0),
            period=probe.get("periodSeconds", 10),
            timeout=probe.get("timeoutSeconds", 1),
            success_threshold=probe.get("successThreshold", 1),
            failure_threshold=probe.get("failureThreshold", 3),
        )

    @staticmethod
    def _pre_stop(lifecycle: Object | None, where: str) -> tuple[str, ...] | None:
        if not lifecycle:
            return None
        _check(lifecycle, {"preStop"}, where)
        hook = lifecycle["preStop"]
        _check(hook, {"exec", "sleep"}, f"{where}.preStop")
        if "sleep" in hook:  # the kubelet sleeps itself (Kubernetes 1.30+): no binary needed in the image
            _check(hook["sleep"], {"seconds"}, f"{where}.preStop.sleep")
            return ("@sleep", str(hook["sleep"]["seconds"]))
        _check(hook["exec"], {"command"}, f"{where}.preStop.exec")
        return tuple(hook["exec"]["command"])


def pod_run(deployment: Object, objects: list[Object], *, image: str, name: str, workdir: Path) -> ContainerRun:
    """The `docker run` of a rendered Deployment's only container, with `image` in place of the
    rendered reference (the same image built in CI; the rendered one is in a registry we cannot
    reach). ConfigMaps and Secrets are looked up in `objects`."""
    if deployment["kind"] != "Deployment":
        raise Unsupported(f"{deployment['kind']}: only Deployments are translated")
    return _Pod(deployment, objects, image, name, workdir).translate()


# --- the Docker component's container --------------------------------------------------------

_DOCKER_CONTAINER = {
    "name",
    "image",
    "command",
    "entrypoints",
    "envs",
    "user",
    "readOnly",
    "memory",
    "memorySwap",
    "cpus",
    "capabilities",
    "securityOpts",
    "tmpfs",
    "volumes",
    "ports",
    "healthcheck",
    "restart",
    "mustRun",
    "labels",
    "stopTimeout",
    "stopSignal",
    "init",
    "logDriver",
    "logOpts",
    "networkMode",
    "networksAdvanced",
    "destroyGraceSeconds",
    "wait",
    "waitTimeout",
}


# How Pulumi's wire format marks a secret value (a stack's config secret, and what is made of it).
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def _revealed(value: Any) -> Any:
    """A value as the provider gets it: a secret's plain value (the engine decrypts it for the provider)."""
    if isinstance(value, dict) and value.get("4dabf18193072939515e22adb298388d") == _SECRET_SIG:
        return _revealed(value["value"])
    return value


def container_run(
    inputs: Mapping[str, Any],
    *,
    image: str,
    name: str,
    volumes: Mapping[str, str],
    networks: Mapping[str, str] | None = None,
) -> ContainerRun:
    """The `docker run` that pulumi-docker would make from a Container's inputs (as Pulumi's
    mocks record them). `volumes` maps the component's volume names to volumes created here,
    `networks` its networks likewise. Without a network the container shares the host's (the
    CI engine has no default bridge); on a network it publishes its ports as the inputs say."""
    where = f"docker Container {inputs.get('name')}"
    _check(inputs, _DOCKER_CONTAINER, where)
    flags: list[str] = []
    if inputs.get("networkMode", "host") != "host":
        raise Unsupported(f"{where}.networkMode: {inputs['networkMode']} (the CI engine has host networking only)")
    attached = inputs.get("networksAdvanced") or []
    if len(attached) > 1:
        raise Unsupported(f"{where}.networksAdvanced: {len(attached)} networks (`docker run` joins one)")
    for network in attached:
        _check(network, {"name", "aliases"}, f"{where}.networksAdvanced[0]")
        flags += ["--network", (networks or {})[network["name"]]]
        flags += [f for alias in network.get("aliases") or [] for f in ("--network-alias", alias)]
    if "logDriver" in inputs or "logOpts" in inputs:
        flags += [
            "--log-driver",
            inputs.get("logDriver", "json-file"),
            *[f for k, v in (inputs.get("logOpts") or {}).items() for f in ("--log-opt", f"{k}={v}")],
        ]
    if "user" in inputs:
        flags += ["--user", inputs["user"]]
    if inputs.get("readOnly"):
        flags.append("--read-only")
    memory = int(inputs["memory"]) * 2**20 if "memory" in inputs else None  # pulumi-docker counts MB
    if memory is not None:
        swap = int(inputs.get("memorySwap", inputs["memory"])) * 2**20
        flags += ["--memory", str(memory), "--memory-swap", str(swap)]
    cpus = float(inputs["cpus"]) if "cpus" in inputs else None
    if cpus is not None:
        flags += ["--cpus", f"{cpus:g}"]
    capabilities = inputs.get("capabilities") or {}
    _check(capabilities, {"drops", "adds"}, f"{where}.capabilities")
    flags += [f for cap in capabilities.get("drops", []) for f in ("--cap-drop", cap)]
    flags += [f for cap in capabilities.get("adds", []) for f in ("--cap-add", cap)]
    flags += [f for opt in inputs.get("securityOpts", []) for f in ("--security-opt", opt)]
    flags += [f for path, opts in (inputs.get("tmpfs") or {}).items() for f in ("--tmpfs", f"{path}:{opts}")]
    mounts: dict[str, str] = {}
    for i, volume in enumerate(inputs.get("volumes") or []):
        _check(volume, {"volumeName", "containerPath", "readOnly"}, f"{where}.volumes[{i}]")
        mode = ":ro" if volume.get("readOnly") else ""
        flags += ["-v", f"{volumes[volume['volumeName']]}:{volume['containerPath']}{mode}"]
        mounts[volume["containerPath"]] = "volume"
    ports: dict[str, int] = {}
    for i, port in enumerate(inputs.get("ports") or []):
        _check(port, {"internal", "external", "protocol", "ip"}, f"{where}.ports[{i}]")
        internal = int(port["internal"])
        if attached:  # published, on the loopback here (pulumi-docker publishes on every interface)
            external = int(port.get("external", internal))
            flags += ["-p", f"127.0.0.1:{external}:{internal}"]
            ports[str(internal)] = external
        else:  # host networking: the server listens on its internal port; -p has no effect there
            ports[str(internal)] = internal
    if "restart" in inputs:
        flags += ["--restart", inputs["restart"]]
    if inputs.get("init"):
        flags.append("--init")
    if "stopSignal" in inputs:
        flags += ["--stop-signal", inputs["stopSignal"]]
    flags += [f for label in inputs.get("labels") or [] for f in ("--label", f"{label['label']}={label['value']}")]
    health = inputs.get("healthcheck")
    if health is not None:
        flags += _healthcheck(health, f"{where}.healthcheck")
    if "stopTimeout" in inputs:
        flags += ["--stop-timeout", str(int(inputs["stopTimeout"]))]
    env = dict(e.split("=", 1) for e in _revealed(inputs.get("envs")) or [])
    entry = ["--entrypoint", inputs["entrypoints"][0]] if inputs.get("entrypoints") else []
    argv = [
        "run",
        "-d",
        "--name",
        name,
        *([] if attached else ["--network", "host"]),
        *entry,
        *flags,
        *[f for k, v in env.items() for f in ("-e", f"{k}={v}")],
        image,
        *(inputs["entrypoints"][1:] if inputs.get("entrypoints") else []),
        *(inputs.get("command") or []),
    ]
    # `wait`/`waitTimeout` make Pulumi wait for `healthy`: the tests wait for it the same way.
    # A stop waits `stopTimeout` (the engine's default: 10 s) after SIGTERM; pulumi-docker's
    # destroy waits `destroyGraceSeconds` before it kills.
    grace = inputs.get("stopTimeout", inputs.get("destroyGraceSeconds", 10))
    return ContainerRun(
        name=name,
        argv=tuple(argv),
        ports=ports,
        env=env,
        mounts=mounts,
        memory_limit=memory,
        cpu_limit=cpus,
        grace_seconds=float(grace),
        healthcheck=health is not None,
    )


def _healthcheck(health: Mapping[str, Any], where: str) -> list[str]:
    _check(health, {"tests", "interval", "timeout", "startPeriod", "retries", "startInterval"}, where)
    tests = list(health["tests"])
    if tests[0] == "CMD":
        command = shlex.join(tests[1:])
    elif tests[0] == "CMD-SHELL":
        command = tests[1]
    else:
        raise Unsupported(f"{where}.tests: {tests[0]}")
    flags = ["--health-cmd", command]
    for key, flag in (
        ("interval", "--health-interval"),
        ("timeout", "--health-timeout"),
        ("startPeriod", "--health-start-period"),
        ("startInterval", "--health-start-interval"),
    ):
        if key in health:
            flags += [flag, health[key]]
    if "retries" in health:
        flags += ["--health-retries", str(int(health["retries"]))]
    return flags


def duration_seconds(text: str) -> float:
    """A Docker duration (`10s`, `1m30s`, `500ms`) in seconds."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- running -----------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr}")
    return done.stdout.strip()


def state(name: str) -> Object:
    return dict(json.loads(docker("inspect", "--format", "{{json .State}}", name)))


def run_startup(run: ContainerRun) -> tuple[float, int]:
    """The kubelet's startup probe: every `period` after `initial_delay`, until a success or
    `failure_threshold` failures. Returns (seconds to the first success, probes tried); raises
    when the threshold is reached or the container stops (its logs in the message)."""
    probe = run.startup or run.readiness
    assert probe is not None, f"{run.name} has no startup or readiness probe"
    started = time.monotonic()
    time.sleep(probe.initial_delay)
    for attempt in range(1, probe.failure_threshold + 1):
        tick = time.monotonic()
        if probe.check():
            return time.monotonic() - started, attempt
        if not state(run.name)["Running"]:
            raise AssertionError(f"{run.name} stopped before it was ready:\n{_stderr(run.name)}")
        time.sleep(max(0.0, probe.period - (time.monotonic() - tick)))
    raise AssertionError(
        f"{run.name}: startup probe {probe.path} failed {probe.failure_threshold} times:\n{_stderr(run.name)}"
    )


def _stderr(name: str) -> str:
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def memory_cgroup(name: str) -> Path | None:
    """The container's memory cgroup folder on this machine (v1 or v2), if it can be seen."""
    pid = state(name)["Pid"]
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return folder if folder.exists() else None
        if controllers == "":
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            if (folder / "memory.current").exists():
                return folder
    return None


def working_set(folder: Path) -> int:
    """What the kubelet calls the working set (and OOM-kills on): usage less inactive file cache."""
    if (folder / "memory.current").exists():  # cgroup v2
        usage = int((folder / "memory.current").read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        return usage - int(stat.get("inactive_file", 0))
    usage = int((folder / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return usage - int(stat.get("total_inactive_file", 0))


def peak_usage(folder: Path) -> int:
    """The cgroup's own high-water mark (cache included)."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (folder / name).exists():
            return int((folder / name).read_text())
    raise FileNotFoundError(folder / "memory.peak")


# --- an IoT Edge module, as the edge agent creates it -------------------------------------------

_EDGE_CREATE = {
    "User",
    "Cmd",
    "Entrypoint",
    "ExposedPorts",
    "StopTimeout",
    "StopSignal",
    "Healthcheck",
    "HostConfig",
    "Labels",
    "Env",
}
_EDGE_HOST = {
    "ReadonlyRootfs",
    "CapDrop",
    "CapAdd",
    "SecurityOpt",
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "Tmpfs",
    "Binds",
    "PortBindings",
    "LogConfig",
    "Init",
}


def edge_create_options(settings: Mapping[str, Any]) -> Object:
    """`createOptions`, `createOptions01`, ... joined in order, as the edge agent reads them."""
    keys = sorted(
        (k for k in settings if k.lower().startswith("createoptions")),
        key=lambda k: int(k[len("createOptions") :] or 0),
    )
    options: Object = json.loads("".join(settings[k] for k in keys))
    return options


def _nanos(value: int) -> str:
    return f"{value / 1e9:g}s"


def edge_run(module: Mapping[str, Any], *, image: str, name: str, volumes: Mapping[str, str]) -> ContainerRun:
    """The `docker run` of a deployment manifest's module: the Docker Engine API create body the
    edge agent sends (its createOptions), the module's env, and `image` in place of the
    manifest's reference. `volumes` maps the named volumes of `Binds` to volumes created here.
    The agent puts modules on its own network; here they share the host's, so port bindings
    are the ports the server listens on."""
    where = f"module {name}"
    _check(
        module,
        {"version", "type", "status", "restartPolicy", "settings", "env", "imagePullPolicy", "startupOrder"},
        where,
    )
    options = edge_create_options(module["settings"])
    _check(options, _EDGE_CREATE, f"{where}.createOptions")
    host = options.get("HostConfig") or {}
    _check(host, _EDGE_HOST, f"{where}.createOptions.HostConfig")
    flags: list[str] = []
    if "User" in options:
        flags += ["--user", options["User"]]
    if host.get("ReadonlyRootfs"):
        flags.append("--read-only")
    if host.get("Init"):
        flags.append("--init")
    memory = host.get("Memory")
    if memory:
        flags += ["--memory", str(memory), "--memory-swap", str(host.get("MemorySwap", memory))]
    cpus = host["NanoCpus"] / 1e9 if host.get("NanoCpus") else None
    if cpus is not None:
        flags += ["--cpus", f"{cpus:g}"]
    flags += [f for cap in host.get("CapDrop", []) for f in ("--cap-drop", cap)]
    flags += [f for cap in host.get("CapAdd", []) for f in ("--cap-add", cap)]
    flags += [f for opt in host.get("SecurityOpt", []) for f in ("--security-opt", opt)]
    flags += [f for path, opts in (host.get("Tmpfs") or {}).items() for f in ("--tmpfs", f"{path}:{opts}")]
    mounts: dict[str, str] = {}
    for bind in host.get("Binds", []):
        source, target, *mode = bind.split(":")
        flags += ["-v", ":".join([volumes[source], target, *mode])]
        mounts[target] = "volume"
    log = host.get("LogConfig")
    if log:
        flags += [
            "--log-driver",
            log["Type"],
            *[f for k, v in log.get("Config", {}).items() for f in ("--log-opt", f"{k}={v}")],
        ]
    ports: dict[str, int] = {}
    for spec, bindings in (host.get("PortBindings") or {}).items():
        port, protocol = spec.split("/")
        if protocol != "tcp" or [b.get("HostPort") for b in bindings] != [port]:
            raise Unsupported(f"{where}: port binding {spec} -> {bindings} (host networking keeps the port)")
        ports[port] = int(port)
    health = options.get("Healthcheck")
    if health is not None:
        _check(health, {"Test", "Interval", "Timeout", "StartPeriod", "Retries"}, f"{where}.createOptions.Healthcheck")
        flags += _healthcheck(
            {
                "tests": health["Test"],
                "retries": health.get("Retries", 3),
                **{
                    k: _nanos(health[v])
                    for k, v in (("interval", "Interval"), ("timeout", "Timeout"), ("startPeriod", "StartPeriod"))
                    if v in health
                },
            },
            f"{where}.createOptions.Healthcheck",
        )
    if "StopTimeout" in options:
        flags += ["--stop-timeout", str(int(options["StopTimeout"]))]
    if "StopSignal" in options:
        flags += ["--stop-signal", options["StopSignal"]]
    env = dict(e.split("=", 1) for e in options.get("Env", []))
    for key, value in (module.get("env") or {}).items():  # the manifest's env wins, as the agent merges it
        _check(value, {"value"}, f"{where}.env.{key}")
        env[key] = str(value["value"])
    entry = ["--entrypoint", options["Entrypoint"][0]] if options.get("Entrypoint") else []
    argv = [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        *entry,
        *flags,
        *[f for k, v in env.items() for f in ("-e", f"{k}={v}")],
        image,
        *(options["Entrypoint"][1:] if options.get("Entrypoint") else []),
        *(options.get("Cmd") or []),
    ]
    return ContainerRun(
        name=name,
        argv=tuple(argv),
        ports=ports,
        env=env,
        mounts=mounts,
        memory_limit=memory,
        cpu_limit=cpus,
        grace_seconds=float(options.get("StopTimeout", 10)),
        healthcheck=health is not None,
    )
