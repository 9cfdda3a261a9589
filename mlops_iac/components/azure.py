"""Azure components (pulumi-azure-native): a Container App per deployment with a revision per
version, a container group per version on Container Instances with an optional stable DNS name.

They build the properties of `azure.py` as the provider's own typed input classes (`typed`),
so a property name the provider does not know fails at `pulumi up`/`preview` time, before any
request reaches Azure, and `mlops-iac render` prints exactly what is deployed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_azure_native.app as app
import pulumi_azure_native.containerinstance as aci
import pulumi_azure_native.dns as dns

from ..azure.apps import container_app, revision_suffix
from ..azure.instances import container_group, dns_record, front_version
from ..manifests import version_name
from ..pinned import BuiltDeployment, built
from ..spec.azure import ContainerAppsTarget, ContainerInstancesTarget

_ARGS = re.compile(r"ForwardRef\('(\w+Args)'\)")
_REFS = re.compile(r"ForwardRef\('(\w+)'\)")


class UnknownProperty(TypeError):
    """A property the provider's input type does not have."""


def _fields(kind: type) -> dict[str, tuple[str, type | None, frozenset[str]]]:
    """camelCase name -> (the Python parameter, the nested input type if it has one, the values
    of its enum if it has one)."""
    import enum
    import inspect

    module = __import__(kind.__module__, fromlist=["_"])
    out = {}
    for param in inspect.signature(kind).parameters.values():
        prop = getattr(kind, param.name, None)
        camel = getattr(getattr(prop, "fget", None), "_pulumi_name", param.name)
        found = _ARGS.search(repr(param.annotation))
        named = [getattr(module, n, None) for n in _REFS.findall(repr(param.annotation))]
        values = frozenset(str(e.value) for c in named if isinstance(c, type) and issubclass(c, enum.Enum) for e in c)
        out[camel] = (param.name, getattr(module, found.group(1)) if found else None, values)
    return out


def typed(kind: type, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`data` (camelCase, as azure.py writes it) as keyword arguments of `kind`, with nested
    mappings and lists built as the provider's input classes; unknown names raise."""
    fields = _fields(kind)
    out = {}
    for key, value in data.items():
        if key not in fields:
            raise UnknownProperty(
                f"{where or kind.__name__}: {kind.__name__} has no property {key!r} "
                f"(it has: {', '.join(sorted(fields))})"
            )
        name, nested, values = fields[key]
        if values and isinstance(value, str) and value not in values:
            raise UnknownProperty(
                f"{where or kind.__name__}.{key}: {value!r} is not one of the provider's values "
                f"({', '.join(sorted(values))})"
            )
        out[name] = _value(nested, value, f"{where}.{key}" if where else key)
    return out


def _value(nested: type | None, value: Any, where: str) -> Any:
    if nested is None or value is None:
        return value
    if isinstance(value, list):
        return [_value(nested, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return nested(**typed(nested, value, where))
    return value


def _args_of(resource: type) -> type:
    module = __import__(resource.__module__, fromlist=["_"])
    kind: type = getattr(module, f"{resource.__name__}Args")
    return kind


def build(resource: type, name: str, data: dict[str, Any], opts: pulumi.ResourceOptions) -> Any:
    """A resource of the provider from azure.py's properties, checked against its Args class."""
    return resource(name, opts=opts, **typed(_args_of(resource), data, resource.__name__))


@dataclass
class RegistryLogin:
    """The stack's registry login (Pulumi config): the password stays a Pulumi secret."""

    username: pulumi.Input[str]
    password: pulumi.Input[str]


@dataclass
class ContainerAppArgs:
    project: str
    target: ContainerAppsTarget
    deployment: BuiltDeployment
    api_key: pulumi.Input[str] | None = None
    registry: RegistryLogin | None = None


class ContainerApp(pulumi.ComponentResource):
    """One deployment: a Container App in multiple-revision mode, the newest version as its
    template (a new revision), the ingress splitting traffic over the versions' revisions."""

    def __init__(self, name: str, args: ContainerAppArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:azure:ContainerApp", name, None, opts)
        dep = args.deployment
        login = (args.registry.username, pulumi.Output.secret(args.registry.password)) if args.registry else None
        key = pulumi.Output.secret(args.api_key) if args.api_key is not None else None
        data = container_app(args.project, args.target, dep, api_key=key, registry=login)
        self.app = build(app.ContainerApp, f"{dep.name}-app", data, pulumi.ResourceOptions(parent=self))
        self.revisions = {str(v.number): f"{dep.name}--{revision_suffix(dep, v)}" for v in dep.versions}
        # The app's own name, which the ingress splits by weight (a revision's FQDN would bypass it).
        self.fqdn: pulumi.Output[str | None] = self.app.configuration.apply(
            lambda c: c.ingress.fqdn if c is not None and c.ingress is not None else None
        )
        self.register_outputs(
            {"fqdn": self.fqdn, "revisions": self.revisions, "weights": {str(v.number): v.weight for v in dep.served}}
        )


@dataclass
class ContainerGroupArgs:
    project: str
    target: ContainerInstancesTarget
    deployment: BuiltDeployment
    api_key: pulumi.Input[str] | None = None
    registry: RegistryLogin | None = None


class ContainerGroups(pulumi.ComponentResource):
    """One deployment on Container Instances: a container group per version, each on its own
    DNS label, and with a front, a CNAME that points at the version with all the traffic (it
    waits for that group, so the name never points at a group that does not exist yet)."""

    def __init__(self, name: str, args: ContainerGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:azure:ContainerGroups", name, None, opts)
        dep, target = args.deployment, args.target
        login = (args.registry.username, pulumi.Output.secret(args.registry.password)) if args.registry else None
        key = pulumi.Output.secret(args.api_key) if args.api_key is not None else None
        child = pulumi.ResourceOptions(parent=self)
        self.groups = {}
        for v in dep.versions:
            data = container_group(args.project, target, dep, v, api_key=key, registry=login)
            self.groups[v.number] = build(aci.ContainerGroup, f"{version_name(dep.model, v)}-group", data, child)
        self.fqdns = {str(n): g.ip_address.apply(lambda ip: ip.fqdn if ip else None) for n, g in self.groups.items()}
        outputs: dict[str, Any] = {"fqdns": self.fqdns}
        if target.front is not None:
            serving = front_version(dep.versions)
            self.record = build(
                dns.RecordSet,
                f"{dep.name}-front",
                dns_record(target, dep, self.fqdns[str(serving.number)]),
                pulumi.ResourceOptions(parent=self, depends_on=[self.groups[serving.number]]),
            )
            outputs["front"] = f"{target.front.name}.{target.front.zone}"
        self.register_outputs(outputs)


def deploy_container_apps(
    plan: Any, target: ContainerAppsTarget, api_key: pulumi.Input[str] | None, registry: RegistryLogin | None
) -> dict[str, Any]:
    exported: dict[str, Any] = {}
    for dep in map(built, plan.deployments):  # every version converted and pushed, or an error
        component = ContainerApp(dep.name, ContainerAppArgs(plan.project, target, dep, _key(dep, api_key), registry))
        exported[dep.name] = component.fqdn
    return exported


def deploy_container_instances(
    plan: Any, target: ContainerInstancesTarget, api_key: pulumi.Input[str] | None, registry: RegistryLogin | None
) -> dict[str, Any]:
    exported: dict[str, Any] = {}
    for dep in map(built, plan.deployments):  # every version converted and pushed, or an error
        component = ContainerGroups(
            dep.name, ContainerGroupArgs(plan.project, target, dep, _key(dep, api_key), registry)
        )
        exported.update({version_name(dep.model, v): component.fqdns[str(v.number)] for v in dep.versions})
    return exported


def _key(dep: BuiltDeployment, api_key: pulumi.Input[str] | None) -> pulumi.Input[str] | None:
    if dep.auth != "key":
        return None
    if api_key is None:
        raise ValueError(
            f"deployment {dep.name} has auth: key; set the key with `pulumi config set --secret mlops:apiKey <key>`"
        )
    return api_key
