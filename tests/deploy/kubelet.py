"""A small kubelet for the tests: run a rendered pod template's containers on this machine.

What it does as the kubelet (and the container runtime) would:

- the environment: the image's ``ENV`` (from the Dockerfile's final stage, or none for the Redis
  image), then the service-link variables of every Service with a cluster IP in the namespace
  (``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT[_<PORT>]``, ``<NAME>_PORT``,
  ``<NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]``; only the ``kubernetes`` Service's when the pod sets
  ``enableServiceLinks: false``), ``envFrom`` and ``env`` in order (literal values, ``configMapKeyRef``,
  ``secretKeyRef``, ``fieldRef``), ``$(VAR)`` expanded with the kubelet's rules (``$$`` escapes, an
  undefined reference stays as it is), ``HOSTNAME`` the pod's name; ``command`` and ``args`` expanded
  the same way;
- volumes: ConfigMap volumes become folders with one file per key, emptyDirs and persistent volumes
  empty folders, all under a temp dir, at a host path that stands for the mount path.

What stands in for the cluster, and is said where it is used:

- **paths**: a pod path (a mount path, or a folder of the image such as ``/opt/venv`` or
  ``/opt/rewardserve``) is mapped to its host folder in ``command``/``args``, in environment values
  and in the mounted ConfigMap files (``PathMap``);
- **network**: each pod gets its own loopback address (its "pod IP", 127.a.b.n); a wildcard listen
  address of the pod becomes that address (each pod has its own network namespace in a cluster,
  here they share one); names resolve through an explicit host map (Service names, also
  ``<svc>.<ns>.svc.cluster.local``, and StatefulSet pods' ``<pod>.<headless svc>``) given to every
  process by ``nss_wrapper`` (``LD_PRELOAD=libnss_wrapper.so NSS_WRAPPER_HOSTS=…``), so
  ``redis-server``, ``redis-cli`` and Python resolve the names as rendered, with the code path of a
  pod. A ClusterIP Service resolves to the address of its first pod (no kube-proxy here).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

NSS_WRAPPER = "libnss_wrapper.so"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- $(VAR) expansion: k8s.io/kubernetes third_party/forked/golang/expansion ----------------------


def expand(text: str, *contexts: Mapping[str, str]) -> str:
    """``$(VAR)`` → its value in the first context that has it; undefined: left as ``$(VAR)``;
    ``$$`` → ``$``; a ``$`` not starting either stays."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    value = next((c[name] for c in contexts if name in c), f"$({name})")
                    out.append(value)
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


# --- service links: pkg/kubelet/envvars/envvars.go ------------------------------------------------


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_env(services: Iterable[dict], cluster_ip: Callable[[dict], str]) -> dict[str, str]:
    """The variables the kubelet sets for Services with a cluster IP (headless ones have none)."""
    env: dict[str, str] = {}
    for svc in services:
        spec = svc["spec"]
        if spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName":
            continue
        ip = cluster_ip(svc)
        prefix = _env_name(svc["metadata"]["name"])
        ports = spec.get("ports", [])
        env[prefix + "_SERVICE_HOST"] = ip
        env[prefix + "_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(p['name'])}"] = str(p["port"])
        for i, p in enumerate(ports):
            proto = p.get("protocol", "TCP")
            url = f"{proto.lower()}://{ip}:{p['port']}"
            if i == 0:
                env[prefix + "_PORT"] = url
            pp = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
            env[pp] = url
            env[pp + "_PROTO"] = proto.lower()
            env[pp + "_PORT"] = str(p["port"])
            env[pp + "_ADDR"] = ip
    return env


# the API server's Service, whose links every pod gets (also with enableServiceLinks: false)
KUBERNETES_SERVICE = {
    "metadata": {"name": "kubernetes"},
    "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
}


# --- the image's ENV -------------------------------------------------------------------------------


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's final stage (``KEY=VALUE`` pairs, ``$VAR`` expanded)."""
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    stages = re.split(r"(?m)^FROM\s", text)
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    for line in stages[-1].splitlines():
        if not line.startswith("ENV "):
            continue
        for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", line[4:]):
            value = value.strip('"')
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


# --- paths -----------------------------------------------------------------------------------------


class PathMap:
    """Pod paths → host folders (longest prefix first)."""

    def __init__(self, mapping: Mapping[str, Path]):
        self.mapping = {k: str(v) for k, v in mapping.items()}
        alternatives = "|".join(re.escape(k) for k in sorted(self.mapping, key=len, reverse=True))
        # one pass: a host folder put in is never mapped again
        self.pattern = re.compile(rf"(?<![\w.~-])({alternatives})(?=/|$|[\s\"',:;])")

    def __call__(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.mapping[m.group(1)], text)


# --- a pod -----------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The rendered objects of one namespace, the test Secrets, and the host map."""

    docs: list[dict]
    root: Path
    ip_base: str  # "127.a.b."
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # test values, by Secret name
    claims: dict[str, Path] = field(default_factory=dict)  # PersistentVolumeClaims with contents, by claim name
    pod_ips: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return next(d["metadata"]["namespace"] for d in self.docs if d["metadata"].get("namespace"))

    def objects(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        (o,) = [d for d in self.objects(kind) if d["metadata"]["name"] == name]
        return o

    def pod_ip(self, pod: str) -> str:
        if pod not in self.pod_ips:
            self.pod_ips[pod] = f"{self.ip_base}{len(self.pod_ips) + 2}"
        return self.pod_ips[pod]

    def name_pods(self) -> None:
        """Pod IPs for every workload's pods, and the host map: Services (ClusterIP: the first pod,
        headless: one name per StatefulSet pod) under their short and namespaced names."""
        ns = self.namespace
        pods: dict[str, list[tuple[str, dict]]] = {}  # workload name → [(pod name, template labels)]
        for w in self.docs:
            if w["kind"] == "StatefulSet":
                names = [f"{w['metadata']['name']}-{i}" for i in range(w["spec"].get("replicas", 1))]
            elif w["kind"] in ("Deployment", "Job"):
                names = [w["metadata"]["name"] + "-0"]
            else:
                continue
            pods[w["metadata"]["name"]] = [(n, w["spec"]["template"]["metadata"].get("labels", {})) for n in names]
            for n in names:
                self.pod_ip(n)
            if w["kind"] == "StatefulSet":
                for n in names:
                    self._add_host(f"{n}.{w['spec']['serviceName']}", ns, self.pod_ip(n))
        for svc in self.objects("Service"):
            sel = svc["spec"].get("selector", {})
            backing = [p for ps in pods.values() for p, labels in ps if all(labels.get(k) == v for k, v in sel.items())]
            if backing:
                self._add_host(svc["metadata"]["name"], ns, self.pod_ip(backing[0]))
        self.hosts_file()

    def _add_host(self, name: str, ns: str, ip: str) -> None:
        for n in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
            self.hosts[n] = ip

    def cluster_ip(self, svc: dict) -> str:
        return self.hosts.get(svc["metadata"]["name"], "10.96.0.1")

    def hosts_file(self) -> Path:
        p = self.root / "hosts"
        if not p.exists():  # written once: name_pods has named every pod by now
            p.write_text("".join(f"{ip} {name}\n" for name, ip in self.hosts.items()))
        return p

    def secret_value(self, name: str, key: str) -> str:
        """A rendered Secret's value, replaced by the test's where the overlay leaves it empty."""
        (s,) = [d for d in self.objects("Secret") if d["metadata"]["name"] == name]
        base = s["metadata"]["name"].rsplit("-", 1)[0] if s["metadata"]["name"] not in self.secrets else name
        test = self.secrets.get(name, self.secrets.get(base, {}))
        if key in test:
            return test[key]
        assert key in s.get("data", {}), f"Secret {name} has no key {key}"
        return base64.b64decode(s["data"][key]).decode()

    def config_map_value(self, name: str, key: str) -> str:
        cm = self.one("ConfigMap", name)
        assert key in cm.get("data", {}), f"ConfigMap {name} has no key {key}"
        value: str = cm["data"][key]
        return value


@dataclass
class Pod:
    """One pod of a workload, prepared: its container's argv and environment, its volumes as host folders."""

    cluster: Cluster
    workload: dict
    name: str
    image_env: dict[str, str]
    image_paths: dict[str, Path]  # pod path → host folder, for what the image holds (venv, heads)
    workdir: str  # the image's WORKDIR (a pod path)
    container_name: str | None = None

    def __post_init__(self) -> None:
        self.spec: dict = self.workload["spec"]["template"]["spec"]
        (self.container,) = [
            c for c in self.spec["containers"] if self.container_name in (None, c["name"])
        ]  # one container per pod in these manifests
        self.dir = self.cluster.root / self.name
        self.ip = self.cluster.pod_ip(self.name)
        self.volumes: dict[str, Path] = {}  # mount path → host folder
        self.writable: list[Path] = []
        self._mount()
        self.paths = PathMap({**self.image_paths, **self.volumes})
        self.env = self._environment()
        argv = [*self.container.get("command", []), *self.container.get("args", [])]
        self.argv = [expand(self.paths(a), self.env) for a in argv]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "log"
        self.log.touch()

    # volumes -------------------------------------------------------------------------------------

    def _mount(self) -> None:
        vols = {v["name"]: v for v in self.spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.workload["spec"].get("volumeClaimTemplates", [])}
        for m in self.container.get("volumeMounts", []):
            host = self.dir / "volumes" / m["name"]
            # a mount inside a folder of the image (/home/rewardserve/.cache) is that folder's
            # subfolder here too, so that paths built from the parent ($HOME/.cache) reach it
            parent = max((p for p in self.image_paths if m["mountPath"].startswith(p + "/")), key=len, default=None)
            if parent is not None:
                host = self.image_paths[parent] / m["mountPath"][len(parent) + 1 :]
            host.mkdir(parents=True, exist_ok=True)
            v = vols.get(m["name"])
            claim = (v or {}).get("persistentVolumeClaim", {}).get("claimName")
            if claim in self.cluster.claims:  # a volume that holds something (e.g. a model)
                self.volumes[m["mountPath"]] = self.cluster.claims[claim]
                continue
            if v is not None and "configMap" in v:
                cm = v["configMap"]["name"]
                for key, text in self.cluster.one("ConfigMap", cm).get("data", {}).items():
                    (host / key).write_text(text)  # mapped below, once every mount is known
            elif v is not None and "emptyDir" in v or m["name"] in claims or (v and "persistentVolumeClaim" in v):
                if not m.get("readOnly"):
                    self.writable.append(host)
            else:
                raise NotImplementedError(f"{self.name}: volume {m['name']}: {v}")
            self.volumes[m["mountPath"]] = host
        # the pod's paths inside the mounted files (e.g. image paths in a config)
        paths = PathMap({**self.image_paths, **self.volumes})
        for host in self.volumes.values():
            if host not in self.writable and host.is_relative_to(self.dir):
                for f in host.iterdir():
                    f.write_text(paths(f.read_text()))
                    f.chmod(0o444)

    # environment ---------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        c, cl = self.container, self.cluster
        services = [KUBERNETES_SERVICE]
        if self.spec.get("enableServiceLinks", True):
            services += cl.objects("Service")
        links = service_link_env(services, cl.cluster_ip)
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = cl.one("ConfigMap", src["configMapRef"]["name"]).get("data", {})
                env.update({prefix + k: v for k, v in data.items()})
            elif "secretRef" in src:
                name = src["secretRef"]["name"]
                (s,) = [d for d in cl.objects("Secret") if d["metadata"]["name"] == name]
                env.update({prefix + k: cl.secret_value(name, k) for k in s.get("data", {})})
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env, links)
            elif "valueFrom" in e:
                env[e["name"]] = self._value_from(e["valueFrom"])
            else:
                env[e["name"]] = ""
        for k, v in links.items():  # the container's own variables win over the service links
            env.setdefault(k, v)
        out = {**self.image_env, "HOSTNAME": self.name, **env}
        return {k: self.paths(v) for k, v in out.items()}

    def _value_from(self, vf: dict) -> str:
        if "secretKeyRef" in vf:
            return self.cluster.secret_value(vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"])
        if "configMapKeyRef" in vf:
            return self.cluster.config_map_value(vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"])
        if "fieldRef" in vf:
            path = vf["fieldRef"]["fieldPath"]
            fields = {"metadata.name": self.name, "metadata.namespace": self.cluster.namespace, "status.podIP": self.ip}
            assert path in fields, f"fieldRef {path} is not emulated"
            return fields[path]
        raise NotImplementedError(f"valueFrom {vf}")

    # running -------------------------------------------------------------------------------------

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The pod's environment, with the host map (nss_wrapper) and ``extra`` (the test's stated adaptations)."""
        return {
            **self.env,
            **(extra or {}),
            "LD_PRELOAD": NSS_WRAPPER,
            "NSS_WRAPPER_HOSTS": str(self.cluster.hosts_file()),
        }

    def start(self, extra_env: Mapping[str, str] | None = None) -> Pod:
        cwd = self.paths(self.workdir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        env = self.process_env(extra_env)
        argv = list(self.argv)
        exe = _which(argv[0], env["PATH"])
        assert exe, f"{self.name}: {argv[0]} is not on the container's PATH {env['PATH']}"
        self.proc = subprocess.Popen(
            [exe, *argv[1:]], env=env, cwd=cwd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT
        )
        return self

    def logs(self, chars: int = 3000) -> str:
        """What ``kubectl logs`` would show (the end of it)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def port(self, ref: str | int) -> int:
        if isinstance(ref, int):
            return ref
        (p,) = [p["containerPort"] for p in self.container.get("ports", []) if p.get("name") == ref]
        return int(p)

    def probe(self, kind: str) -> tuple[bool, str]:
        """Run the container's ``kind`` probe once, as the kubelet would: HTTP GET on the pod IP
        (200-399 succeeds, within timeoutSeconds), or the exec command in the container's environment
        (exit 0)."""
        p = self.container[kind]
        timeout = p.get("timeoutSeconds", 1)
        if "httpGet" in p:
            g = p["httpGet"]
            url = f"http://{self.ip}:{self.port(g['port'])}{g.get('path', '/')}"
            try:
                r = httpx.get(url, timeout=timeout)
            except httpx.HTTPError as e:
                return False, f"GET {url}: {e!r}"
            return 200 <= r.status_code < 400, f"GET {url}: {r.status_code}"
        if "exec" in p:
            cmd = [expand(self.paths(a), self.env) for a in p["exec"]["command"]]
            # redis-cli without -h asks 127.0.0.1, the pod's own loopback in a cluster: here the pod IP
            if Path(cmd[0]).name == "redis-cli" and "-h" not in cmd:
                cmd = [cmd[0], "-h", self.ip, *cmd[1:]]
            try:
                r = subprocess.run(cmd, env=self.process_env(), capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return False, f"{cmd}: timed out after {timeout} s"
            return r.returncode == 0, f"{cmd}: exit {r.returncode} {r.stdout.strip()} {r.stderr.strip()}"
        raise NotImplementedError(f"probe {p}")

    def wait_for_probe(self, kind: str, budget: float | None = None, poll: float = 0.25) -> float:
        """Seconds until the probe succeeds; fails once the kubelet would have given up
        (initialDelaySeconds + periodSeconds × failureThreshold), with the pod's log. The probe is
        tried more often than periodSeconds: the outcome is the same, sooner."""
        p = self.container[kind]
        if budget is None:
            budget = p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < budget:
            if self.exited() is not None:
                raise AssertionError(
                    f"pod {self.name}: container exited with {self.exited()} before its {kind} passed "
                    f"(kubectl logs {self.name}):\n{self.logs()}"
                )
            ok, last = self.probe(kind)
            if ok:
                return time.monotonic() - t0
            time.sleep(poll)
        raise AssertionError(f"pod {self.name}: {kind} still failing after {budget} s ({last}):\n{self.logs()}")

    def terminate(
        self, during_pre_stop: Callable[[], None] | None = None, after_sigterm: Callable[[], None] | None = None
    ) -> tuple[float, int]:
        """The kubelet's termination: the preStop hook (sleep or exec), then SIGTERM, then SIGKILL at
        terminationGracePeriodSeconds (counted from the start of preStop). Returns (seconds until the
        container exited, its exit code); the code is -9 when the grace period ran out."""
        assert self.proc is not None
        grace = self.spec.get("terminationGracePeriodSeconds", 30)
        t0 = time.monotonic()
        pre = self.container.get("lifecycle", {}).get("preStop")
        if pre and "sleep" in pre:
            end = t0 + pre["sleep"]["seconds"]
            if during_pre_stop:
                during_pre_stop()
            time.sleep(max(0.0, end - time.monotonic()))
        elif pre and "exec" in pre:
            cmd = [expand(self.paths(a), self.env) for a in pre["exec"]["command"]]
            subprocess.run(cmd, env=self.process_env(), timeout=grace)
        elif pre:
            raise NotImplementedError(f"preStop {pre}")
        self.proc.send_signal(signal.SIGTERM)
        if after_sigterm:
            after_sigterm()
        try:
            code = self.proc.wait(max(0.1, grace - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        return time.monotonic() - t0, code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _which(cmd: str, path: str) -> str | None:
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) else None
    for d in path.split(":"):
        p = Path(d) / cmd
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


# tools' caches, written by whichever process runs the tool first (Python's bytecode: any test
# worker's import, and in a read-only image a failed write that Python ignores)
TOOL_CACHES = frozenset({"__pycache__", ".hypothesis", ".ruff_cache", ".mypy_cache", ".pytest_cache"})


def snapshot(roots: Iterable[Path], skip: Iterable[Path] = ()) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file and (0, -1) of every folder under ``roots``, but not under
    ``skip`` or in a tool's cache (``TOOL_CACHES``)."""
    skipped = {str(s) for s in skip}
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped and d not in TOOL_CACHES]
            for n in [*filenames, *dirnames, ""]:
                p = os.path.join(dirpath, n) if n else dirpath
                if p in skipped:
                    continue
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                # a folder by its presence: what it holds is listed itself (its mtime would also move
                # when a tool's cache appears in it)
                out[p] = (0, -1) if stat.S_ISDIR(st.st_mode) else (st.st_mtime_ns, st.st_size)
    return out


def changed(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
