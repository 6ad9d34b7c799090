"""The Helm chart (deploy/chart/externalsource-controller), checked by check.py.

- For each set of choices the kustomize overlays offer, `helm template` renders objects that
  pass every check the overlays pass, and the same objects: matched by their role (the
  controller Deployment, the artifact Service, the config, the leader-election Role, ...), not
  by name, with the fields that matter compared (replicas, strategy, image, args, env, probes,
  resources, security contexts, mounts, ports, the parsed config.toml, RBAC rules, policies).
- `values.schema.json` knows exactly the configuration keys the controller reads, and wrong
  values fail with the field named.
- On a real API server: `helm install`, `helm upgrade` to another backend and back, and
  `helm uninstall`, which leaves no object behind and never touches the flux-system Namespace.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path
from types import ModuleType

import yaml

RELEASE = "externalsource-controller"

# chart case -> (--set values, the kustomize render it must equal (kind, name), backend)
CASES: dict[str, tuple[list[str], tuple[str, str], str]] = {
    "default": ([], ("overlay", "default"), "memory"),
    "filesystem": (["storage.backend=filesystem"], ("overlay", "filesystem"), "filesystem"),
    "filesystem-shared": (["storage.backend=filesystem", "storage.filesystem.shared=true"],
                          ("overlay", "filesystem-shared"), "filesystem"),
    "s3-direct": (["storage.backend=s3", "storage.s3.mode=direct",
                   "storage.s3.publicUrl=https://flux-artifacts.s3.us-east-1.amazonaws.com"],
                  ("overlay", "s3-direct"), "s3"),
    "s3-proxy": (["storage.backend=s3", "artifactServer.enabled=true", "podDisruptionBudget.enabled=true"],
                 ("overlay", "s3-proxy"), "s3"),
    "networkpolicy": (["networkPolicy.enabled=true"], ("overlay", "networkpolicy"), "memory"),
    "hooks": (["hooks.enabled=true"], ("fixture", "hooks"), "memory"),
    "receiver": (["receiver.enabled=true"], ("fixture", "receiver"), "memory"),
    "egress-policy": (["networkPolicy.egress.enabled=true"], ("fixture", "egress-policy"), "memory"),
    "monitoring": (["serviceMonitor.enabled=true", "prometheusRule.enabled=true", "grafanaDashboard.enabled=true"],
                   ("fixture", "monitoring"), "memory"),
}

# Wrong values and what the error must name.
BAD_VALUES: list[tuple[list[str], list[str]]] = [
    (["storage.backend=redis"], ["storage", "backend", "memory", "filesystem", "s3"]),
    (["storage.s3.mode=both"], ["mode", "proxy", "direct"]),
    (["controller.replicas=-1"], ["replicas"]),
    (["config.server.port=70000"], ["port"]),
    (["config.fetch.max_sise=1MiB"], ["max_sise"]),
    (["config.controller.min_interval=soon"], ["min_interval"]),
    (["artifactServer.enabled=true"], ["artifactServer.enabled", "shared store"]),
    (["storage.backend=s3", "storage.s3.mode=direct", "artifactServer.enabled=true"], ["artifactServer.enabled", "direct"]),
]

# Keys the chart sets itself (so that releases do not share a Lease), absent from `config`.
CHART_OWNED_KEYS = {("controller", "lease_name")}


class Chart:
    def __init__(self, helm: str, path: Path, namespace: str) -> None:
        self.helm, self.path, self.namespace = helm, path, namespace

    def template(self, values: list[str]) -> subprocess.CompletedProcess:
        args = [self.helm, "template", RELEASE, str(self.path), "--namespace", self.namespace]
        for v in values:
            args += ["--set", v]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- roles

def subcommand_of(ck: ModuleType, wl: dict) -> str:
    containers = ck.pod_spec(wl).get("containers") or [{}]
    return ck.subcommand(containers[0])


def role(ck: ModuleType, ren, obj: dict) -> tuple[str, str]:
    """What an object is for, independent of its name."""
    kind, name = obj.get("kind", "?"), ck.name_of(obj)
    if kind in ("Deployment", "StatefulSet"):
        return ("Deployment", subcommand_of(ck, obj))
    if kind == "ServiceAccount":
        users = [subcommand_of(ck, wl) for wl in ck.workloads(ren)
                 if ck.pod_spec(wl).get("serviceAccountName") == name]
        return (kind, ",".join(sorted(users)) or "unused")
    if kind == "Service":
        ports = obj.get("spec", {}).get("ports") or [{}]
        return (kind, str(ports[0].get("name")))
    if kind == "ConfigMap":
        data = obj.get("data") or {}
        if "config.toml" in data:
            return (kind, "config")
        if "whitelist.toml" in data:
            return (kind, "hook-whitelist")
        if any(k.startswith("S3_") for k in data):
            return (kind, "s3-settings")
        return (kind, "other:" + ",".join(sorted(data)))
    if kind == "ClusterRole":
        agg = sorted(k for k in (obj.get("metadata", {}).get("labels") or {}) if k.startswith("rbac.authorization.k8s.io/aggregate-to-"))
        return (kind, "user:" + ",".join(agg) if agg else "controller")
    if kind in ("ClusterRoleBinding", "RoleBinding"):
        ref = obj.get("roleRef") or {}
        target = ren.get(ref.get("kind", ""), ref.get("name", ""))
        return (kind, role(ck, ren, target)[1] if target else f"missing:{ref.get('name')}")
    if kind == "Role":
        return (kind, "leases" if "leases" in json.dumps(obj.get("rules")) else "other")
    if kind == "NetworkPolicy":
        return (kind, "+".join(obj.get("spec", {}).get("policyTypes") or []))
    if kind == "CustomResourceDefinition":
        return (kind, name)
    return (kind, "")


def roles(ck: ModuleType, ren) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for d in ren.docs:
        out.setdefault(role(ck, ren, d), d)
    return out


# --------------------------------------------------------------------------- comparison

def volume_kind(ck: ModuleType, ren, ns, vol: dict) -> str:
    if "configMap" in vol:
        cm = ren.get("ConfigMap", vol["configMap"].get("name"), ns)
        return "configMap:" + (role(ck, ren, cm)[1] if cm else "missing")
    if "persistentVolumeClaim" in vol:
        return "pvc"
    if "emptyDir" in vol:
        return "emptyDir:" + json.dumps(vol["emptyDir"], sort_keys=True)
    if "projected" in vol:
        return "projected:" + ",".join(sorted(k for s in vol["projected"].get("sources") or [] for k in s))
    return "other"


def env_shape(ck: ModuleType, ren, ns, container: dict) -> dict:
    """Env entries by name; references compared by what they point at, not by object name."""
    out = {}
    for e in container.get("env") or []:
        name = e.get("name")
        if name == "SERVICE_NAME":
            svc = ren.get("Service", e.get("value"), ns)
            out[name] = "the artifact Service" if svc and role(ck, ren, svc) == ("Service", "artifacts") else e.get("value")
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                out[name] = ("secret", vf["secretKeyRef"].get("key"))
            else:
                out[name] = json.dumps(vf, sort_keys=True)
        else:
            out[name] = e.get("value")
    for ef in container.get("envFrom") or []:
        ref = (ef.get("configMapRef") or {}).get("name")
        cm = ren.get("ConfigMap", ref, ns) if ref else None
        out[f"envFrom:{role(ck, ren, cm)[1] if cm else ref}"] = True
    return out


def workload_shape(ck: ModuleType, ren, wl: dict) -> dict:
    pod, ns = ck.pod_spec(wl), ck.ns_of(wl)
    vols = {v.get("name"): volume_kind(ck, ren, ns, v) for v in pod.get("volumes") or []}
    containers = {}
    for c in pod.get("containers") or []:
        image = str(c.get("image", ""))
        containers[c.get("name")] = {
            "image": image if "externalsource-controller" in image else image.rsplit(":", 1)[0],
            "args": c.get("args"), "command": c.get("command"),
            "ports": sorted((p.get("name"), p.get("containerPort")) for p in c.get("ports") or []),
            "env": env_shape(ck, ren, ns, c),
            "probes": {k: c.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")},
            "resources": c.get("resources"),
            "securityContext": c.get("securityContext"),
            "mounts": sorted((m.get("mountPath"), vols.get(m.get("name")), bool(m.get("readOnly")))
                             for m in c.get("volumeMounts") or []),
        }
    spec = wl.get("spec", {})
    return {
        "replicas": spec.get("replicas", 1),
        "strategy": spec.get("strategy"),
        "podSecurityContext": pod.get("securityContext"),
        "automountServiceAccountToken": pod.get("automountServiceAccountToken"),
        "terminationGracePeriodSeconds": pod.get("terminationGracePeriodSeconds"),
        "containers": containers,
    }


def config_shape(cm: dict, kustomize: bool) -> dict:
    conf = tomllib.loads((cm.get("data") or {}).get("config.toml", ""))
    if kustomize:
        # The chart names the Lease after the release; for this release that is the default.
        conf.setdefault("controller", {}).setdefault("lease_name", f"{RELEASE}-leader")
        fs = conf.get("storage", {}).get("filesystem")
        if isinstance(fs, dict):
            fs.setdefault("shared", False)
    return conf


def rules_shape(rules) -> list:
    return sorted(json.dumps({k: sorted(v) if isinstance(v, list) else v for k, v in r.items()}, sort_keys=True)
                  for r in rules or [])


def shape(ck: ModuleType, ren, obj: dict, kustomize: bool):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet"):
        return workload_shape(ck, ren, obj)
    if kind == "Service":
        return {"type": spec.get("type"),
                "ports": sorted((p.get("name"), p.get("port"), p.get("targetPort"), p.get("protocol")) for p in spec.get("ports") or [])}
    if kind == "ConfigMap":
        data = obj.get("data") or {}
        if "config.toml" in data:
            return config_shape(obj, kustomize)
        if "whitelist.toml" in data:
            return tomllib.loads(data["whitelist.toml"])
        return data
    if kind in ("ClusterRole", "Role"):
        agg = {k: v for k, v in (obj.get("metadata", {}).get("labels") or {}).items() if "aggregate-to" in k}
        return {"rules": rules_shape(obj.get("rules")), "aggregation": agg}
    if kind in ("ClusterRoleBinding", "RoleBinding"):
        return sorted((s.get("kind"), s.get("namespace")) for s in obj.get("subjects") or [])
    if kind == "ServiceAccount":
        return {"automountServiceAccountToken": obj.get("automountServiceAccountToken")}
    if kind == "PersistentVolumeClaim":
        return {"accessModes": spec.get("accessModes"), "resources": spec.get("resources")}
    if kind == "PodDisruptionBudget":
        return {"minAvailable": spec.get("minAvailable"), "maxUnavailable": spec.get("maxUnavailable")}
    if kind == "NetworkPolicy":
        return {k: v for k, v in spec.items() if k != "podSelector"}
    if kind == "ServiceMonitor":
        return spec.get("endpoints")
    if kind == "PrometheusRule":
        return spec.get("groups")
    if kind == "CustomResourceDefinition":
        return spec
    return None


def diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}.{k}: only in the chart ({json.dumps(b[k], default=str)[:120]})")
            elif k not in b:
                out.append(f"{path}.{k}: only in kustomize ({json.dumps(a[k], default=str)[:120]})")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if a != b:
        return [f"{path}: kustomize {json.dumps(a, default=str)[:160]} vs chart {json.dumps(b, default=str)[:160]}"]
    return []


def check_parity(ck: ModuleType, r, scope: str, kus, chart) -> None:
    k_roles, c_roles = roles(ck, kus), roles(ck, chart)
    only_k = sorted(set(k_roles) - set(c_roles))
    only_c = sorted(set(c_roles) - set(k_roles))
    r.check(scope, "the chart renders the same set of objects as kustomize (by role)", not only_k and not only_c,
            f"only in kustomize {only_k}; only in the chart {only_c}")
    for key in sorted(set(k_roles) & set(c_roles)):
        d = diff(shape(ck, kus, k_roles[key], True), shape(ck, chart, c_roles[key], False))
        r.check(scope, f"{key[0]} ({key[1] or 'one'}): same fields as kustomize", not d, "; ".join(d[:6]))


# --------------------------------------------------------------------------- schema

def check_schema(ck: ModuleType, r, chart_dir: Path) -> None:
    scope = "chart:schema"
    try:
        schema = json.loads((chart_dir / "values.schema.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        r.check(scope, "values.schema.json parses", False, str(e))
        return
    tables = schema["properties"]["config"]["properties"]
    known = {t: set(keys) for t, keys in ck.KNOWN_KEYS.items() if t != "storage"}
    for table in sorted(set(known) | set(tables)):
        in_schema = set((tables.get(table) or {}).get("properties") or {})
        want = {k for k in known.get(table, set()) if (table, k) not in CHART_OWNED_KEYS}
        r.check(scope, f"config.{table}: the schema lists exactly the keys the controller reads",
                in_schema == want, f"missing {sorted(want - in_schema)}; unknown to the controller {sorted(in_schema - want)}")
        r.check(scope, f"config.{table}: other keys are refused",
                (tables.get(table) or {}).get("additionalProperties") is False)
    # The default whitelist is the component's.
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    component = tomllib.loads((ck.DEPLOY / "components" / "hooks" / "whitelist.toml").read_text())
    r.check(scope, "hooks.whitelist defaults to deploy/components/hooks/whitelist.toml",
            tomllib.loads(values["hooks"]["whitelist"]) == component)
    copy = chart_dir / "files" / ck.CRD_FILE.name
    r.check(scope, f"files/{copy.name} equals {ck.CRD_FILE.relative_to(ck.REPO)}",
            copy.exists() and copy.read_bytes() == ck.CRD_FILE.read_bytes(),
            f"copy it: cp {ck.CRD_FILE.relative_to(ck.REPO)} {copy.relative_to(ck.REPO)}")
    copy = chart_dir / "files" / ck.DASHBOARD_FILE.name
    r.check(scope, f"files/{copy.name} equals {ck.DASHBOARD_FILE.relative_to(ck.REPO)}",
            copy.exists() and copy.read_bytes() == ck.DASHBOARD_FILE.read_bytes(),
            f"copy it: cp {ck.DASHBOARD_FILE.relative_to(ck.REPO)} {copy.relative_to(ck.REPO)}")


def check_bad_values(r, chart: Chart) -> None:
    scope = "chart:schema"
    for values, words in BAD_VALUES:
        proc = chart.template(values)
        err = proc.stderr + proc.stdout
        missing = [w for w in words if w not in err]
        r.check(scope, f"--set {' '.join(values)} fails naming {words}", proc.returncode != 0 and not missing,
                f"exit {proc.returncode}, missing {missing}: {ck_short(err)}")


def ck_short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- renders

def run_render_checks(ck: ModuleType, r, helm: str, kubectl: str, binary: str | None, linked: set[str],
                      wanted) -> None:
    chart_dir = ck.DEPLOY / "chart" / RELEASE
    chart = Chart(helm, chart_dir, ck.NAMESPACE)
    check_schema(ck, r, chart_dir)
    check_bad_values(r, chart)
    for name, (values, (kind, target), backend) in CASES.items():
        if not wanted(f"chart:{name}"):
            continue
        scope = f"chart:{name}"
        lint = [helm, "lint", "--strict", str(chart_dir), "--namespace", ck.NAMESPACE]
        for v in values:
            lint += ["--set", v]
        proc = subprocess.run(lint, capture_output=True, text=True, timeout=120)
        r.check(scope, "helm lint --strict", proc.returncode == 0, ck_short(proc.stdout + proc.stderr))
        proc = chart.template(values)
        if not r.check(scope, "helm template renders", proc.returncode == 0, ck_short(proc.stderr)):
            continue
        ren = ck.Render(list(yaml.safe_load_all(proc.stdout)))
        ck.check_controller_overlay(r, scope, ren, backend, expect_ns=ck.NAMESPACE,
                                    require_netpol=(name == "networkpolicy"))
        if name == "hooks":
            ck.check_hooks(r, scope, ren)
        if name == "egress-policy":
            ck.check_egress_policy(r, scope, ren)
        if linked and binary:
            ck.check_with_binary(r, scope, ren, binary, linked)
        path = ck.DEPLOY / target if kind == "overlay" else ck.FIXTURES / target
        kus, err = ck.render(kubectl, path)
        if r.check(scope, f"kustomize render of {path.relative_to(ck.REPO)}", kus is not None, err):
            check_parity(ck, r, scope, kus, ren)


# --------------------------------------------------------------------------- lifecycle

class Kube:
    def __init__(self, kubectl: str, kubeconfig: str, helm: str) -> None:
        self.kc = [kubectl, "--kubeconfig", kubeconfig]
        self.helm = [helm, "--kubeconfig", kubeconfig]

    def run(self, args: list[str], timeout: int = 180, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=stdin)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return self.run(self.kc + list(args), stdin=stdin)

    def get_json(self, *args: str) -> dict | None:
        proc = self.kubectl("get", *args, "-o", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None


def manifest_objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind")]


def live_state(kube: Kube, obj: dict, namespace: str) -> str:
    """`present`, `gone`, or `terminating` (deleted, held only by Kubernetes' own protection
    finalizers, which kube-controller-manager would clear; the test control plane runs none)."""
    kind = obj["kind"]
    args = [kind, obj["metadata"]["name"]]
    if kind not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
        args += ["-n", namespace]
    proc = kube.kubectl("get", *args, "-o", "json")
    if proc.returncode != 0:
        return "gone" if "NotFound" in proc.stderr else f"unknown ({ck_short(proc.stderr, 200)})"
    live = json.loads(proc.stdout)
    fins = set(live.get("metadata", {}).get("finalizers") or [])
    if live.get("metadata", {}).get("deletionTimestamp") and fins <= {"kubernetes.io/pvc-protection"}:
        return "terminating"
    return "present"


def release_pvcs(kube: Kube, namespace: str, objs: list[dict]) -> None:
    """Does what kube-controller-manager's PVC protection controller would do once no pod uses a
    deleted claim: drops its finalizer, so the name is free for the checks that follow."""
    for o in objs:
        if o["kind"] == "PersistentVolumeClaim" and live_state(kube, o, namespace) == "terminating":
            kube.kubectl("patch", "pvc", o["metadata"]["name"], "-n", namespace, "--type=merge",
                         "-p", '{"metadata":{"finalizers":null}}')


def run_lifecycle(ck: ModuleType, r, helm: str, kubectl: str, kubeconfig: str) -> None:
    """helm install -> upgrade (s3, then filesystem) -> uninstall on the real API server."""
    scope = "chart:lifecycle"
    ns = ck.NAMESPACE
    kube = Kube(kubectl, kubeconfig, helm)
    chart_dir = str(ck.DEPLOY / "chart" / RELEASE)
    before = kube.get_json("namespace", ns)
    if before is None:
        proc = kube.kubectl("create", "namespace", ns)
        r.check(scope, f"create namespace {ns} (absent on this API server)", proc.returncode == 0, ck_short(proc.stderr))
        before = kube.get_json("namespace", ns)
    if not r.check(scope, f"namespace {ns} exists", before is not None):
        return
    uid = before["metadata"]["uid"]

    # The test control plane installs the CRD itself; --take-ownership adopts it, as it would
    # an install made with kustomize (docs/usage.md, "Installing": moving a kustomize install to Helm).
    steps = [
        ("install", ["install", RELEASE, chart_dir, "-n", ns, "--take-ownership"], "memory"),
        ("upgrade to s3 (proxy, serve-only replicas)",
         ["upgrade", RELEASE, chart_dir, "-n", ns, "--set", "storage.backend=s3", "--set", "artifactServer.enabled=true",
          "--set", "podDisruptionBudget.enabled=true"], "s3"),
        ("upgrade to filesystem", ["upgrade", RELEASE, chart_dir, "-n", ns, "--set", "storage.backend=filesystem"], "filesystem"),
    ]
    previous: list[dict] = []
    for what, args, backend in steps:
        proc = kube.run(kube.helm + args)
        if not r.check(scope, f"helm {what}", proc.returncode == 0, ck_short(proc.stderr or proc.stdout)):
            return
        proc = kube.run(kube.helm + ["get", "manifest", RELEASE, "-n", ns])
        objs = manifest_objects(proc.stdout)
        absent = [f"{o['kind']}/{o['metadata']['name']}" for o in objs if live_state(kube, o, ns) != "present"]
        r.check(scope, f"{what}: all {len(objs)} objects of the release exist", objs and not absent, f"absent {absent}")
        dep = kube.get_json("deployment", RELEASE, "-n", ns)
        env = {e.get("name"): e.get("value") for c in (dep or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
               for e in c.get("env") or []}
        # Absent means the controller's default, memory.
        r.check(scope, f"{what}: the Deployment runs the {backend} backend", env.get("STORAGE_BACKEND", "memory") == backend,
                f"STORAGE_BACKEND={env.get('STORAGE_BACKEND')}")
        names = {(o["kind"], o["metadata"]["name"]) for o in objs}
        dropped = [o for o in previous if (o["kind"], o["metadata"]["name"]) not in names]
        stale = [f"{o['kind']}/{o['metadata']['name']}" for o in dropped if live_state(kube, o, ns) == "present"]
        r.check(scope, f"{what}: objects the new values no longer need are deleted", not stale, f"still there {stale}")
        previous = objs

    # A wrong value fails the upgrade and leaves the release as it was.
    proc = kube.run(kube.helm + ["upgrade", RELEASE, chart_dir, "-n", ns, "--set", "storage.backend=redis"])
    r.check(scope, "helm upgrade with storage.backend=redis is refused, naming the field",
            proc.returncode != 0 and "backend" in proc.stderr, ck_short(proc.stderr))
    status = kube.run(kube.helm + ["status", RELEASE, "-n", ns, "-o", "json"])
    revision = json.loads(status.stdout).get("version") if status.returncode == 0 else None
    r.check(scope, "the refused upgrade made no revision", revision == len(steps), f"revision {revision}")

    # Without --wait: Helm 4 would wait for the PVC, which only kube-controller-manager (not run
    # by the test control plane) releases from its protection finalizer.
    proc = kube.run(kube.helm + ["uninstall", RELEASE, "-n", ns])
    r.check(scope, "helm uninstall", proc.returncode == 0, ck_short(proc.stderr or proc.stdout))
    release_pvcs(kube, ns, previous)
    # The CRD goes once the API server has removed its (here: no) custom resources; later
    # checks apply it again.
    crd = {"kind": "CustomResourceDefinition", "metadata": {"name": ck.name_of(yaml.safe_load(ck.CRD_FILE.read_text()))}}
    deadline = time.monotonic() + 60
    while live_state(kube, crd, ns) != "gone" and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [f"{o['kind']}/{o['metadata']['name']}: {s}" for o in previous if (s := live_state(kube, o, ns)) not in ("gone", "terminating")]
    r.check(scope, "helm uninstall leaves no object of the release behind (CRD included)", not left, f"{left}")
    # Kinds listed one by one: the category `all` includes ExternalSources, gone with the CRD.
    labelled = kube.kubectl("get", "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,"
                            "rolebindings,pvc,pdb,networkpolicies",
                            "-n", ns, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
    cluster = kube.kubectl("get", "clusterroles,clusterrolebindings,crd", "-l", f"app.kubernetes.io/instance={RELEASE}",
                           "-o", "name")
    pvcs = [line for line in labelled.stdout.split() if line.startswith("persistentvolumeclaim/")]
    leftovers = [line for line in (labelled.stdout + cluster.stdout).split() if line not in pvcs] + [
        p for p in pvcs if live_state(kube, {"kind": "PersistentVolumeClaim", "metadata": {"name": p.split("/", 1)[1]}}, ns) == "present"]
    r.check(scope, "nothing labelled with the release is left, in the namespace or cluster-wide",
            labelled.returncode == 0 and cluster.returncode == 0 and not leftovers, f"{leftovers} {ck_short(labelled.stderr)}")
    releases = kube.kubectl("get", "secrets", "-n", ns, "-l", f"owner=helm,name={RELEASE}", "-o", "name")
    r.check(scope, "helm's release records are gone", releases.returncode == 0 and not releases.stdout.strip(), releases.stdout)
    after = kube.get_json("namespace", ns)
    r.check(scope, f"namespace {ns} untouched (same uid, not terminating)",
            after is not None and after["metadata"]["uid"] == uid and not after["metadata"].get("deletionTimestamp"))

