"""KubeRay manifests, validated structurally (there is no Kubernetes here): in sync with
configs/serve.yaml, accepted by Ray Serve's own schema and by the app's settings, every container
with resource requests, every secret and volume they name defined."""
from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def _render():
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _containers(cluster: dict) -> tuple[list[dict], list[dict]]:
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for p in pods for c in p["spec"]["containers"]], [v for p in pods for v in p["spec"]["volumes"]]


def test_manifests_are_rendered_from_the_current_serve_config():
    for name, text in _render().render().items():
        assert (K8S / name).read_text() == text, f"deploy/k8s/{name} is stale: run python deploy/k8s/render.py"


def test_serve_config_v2_is_a_valid_serve_deployment_of_this_app():
    from ray.serve.schema import ServeDeploySchema

    from serve.settings import settings_from_args

    (service,) = _docs("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(config)
    (app,) = config["applications"]
    settings = settings_from_args(app["args"])  # the app's own validation, as at deploy time
    assert settings.feedback.database == "postgresql" and settings.feedback.database_url_file
    assert "postgresql://" not in service["spec"]["serveConfigV2"]  # the URL is a Secret, not config
    local = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]
    assert app["deployments"] == local["deployments"] and app["import_path"] == local["import_path"]
    assert app["args"]["rollout"] == local["args"]["rollout"] and app["args"]["trainer"]["lr"] == local["args"]["trainer"]["lr"]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob.yaml"])
def test_every_container_has_resources_and_every_secret_and_volume_exists(name):
    (doc,) = _docs(name)
    cluster = doc["spec"]["rayClusterConfig" if doc["kind"] == "RayService" else "rayClusterSpec"]
    containers, volumes = _containers(cluster)
    shared = {(d["kind"], d["metadata"]["name"]): d for d in _docs("shared.yaml")}
    for c in containers:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
    mounts = {m["name"]: m["mountPath"] for c in containers for m in c["volumeMounts"]}
    for v in volumes:
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in shared
        if "persistentVolumeClaim" in v:
            assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in shared
    if doc["kind"] == "RayService":
        args = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
        secret = shared[("Secret", "barp-secrets")]["stringData"]
        for path in (args["auth"]["token_file"], args["auth"]["admin_token_file"], args["feedback"]["database_url_file"]):
            directory, key = path.rsplit("/", 1)
            assert directory == mounts["secrets"] and key in secret, path  # a file the Secret mount provides
        for path in (args["checkpoint"], args["log_dir"], args["trainer"]["state_dir"], args["retention"]["archive"]):
            assert path.startswith(mounts["shared"] + "/"), path  # on the shared volume, not a pod's disk


def test_every_pod_and_the_image_serve_in_the_tested_mode():
    """Ray's processes read the serving mode from their environment (serve/ray_env.py): every
    container of the RayService and the image set it, as tests/conftest.py does for the suite."""
    from serve.ray_env import HIGH_THROUGHPUT

    (doc,) = _docs("rayservice.yaml")
    for c in _containers(doc["spec"]["rayClusterConfig"])[0]:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert HIGH_THROUGHPUT.items() <= env.items(), c["name"]
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    env_lines = [shlex.split(line)[1:] for line in dockerfile.splitlines() if line.startswith("ENV ")]
    assert HIGH_THROUGHPUT.items() <= dict(kv.split("=", 1) for line in env_lines for kv in line).items()


def test_rayjob_runs_the_training_entrypoint_and_writes_the_checkpoint_the_service_serves():
    from barp_ray.train import parse_args

    (job,) = _docs("rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "barp_ray.train"]
    args = parse_args(argv[3:])
    assert args.config == "/app/configs/llmrouter.yaml" and (ROOT / "configs" / "llmrouter.yaml").exists()
    (service,) = _docs("rayservice.yaml")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["checkpoint"]
    assert args.checkpoint_dir == served
    readme = (ROOT / "README.md").read_text()
    assert "-- python -m barp_ray.train --config configs/llmrouter.yaml" in readme  # the same entrypoint as ray job submit


def test_the_grafana_dashboard_queries_only_metrics_the_service_exports():
    import json
    import re

    root = Path(__file__).resolve().parents[1]
    dash = json.loads((root / "deploy" / "grafana" / "barp-router.json").read_text())
    exported = set(re.findall(r'"(barp_[a-z_]+)"', (root / "serve" / "metrics.py").read_text()))
    queried = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"ray_(barp_[a-z_]+)", t["expr"])}
    histograms = {m[: -len(s)] for m in queried for s in ("_bucket", "_count", "_sum") if m.endswith(s)}
    plain = {m for m in queried if not any(m.endswith(s) for s in ("_bucket", "_count", "_sum"))}
    assert queried and (plain | histograms) <= exported, (plain | histograms) - exported
    assert exported <= plain | histograms, exported - (plain | histograms)  # every metric has a panel


def _exported_metrics() -> dict[str, set[str]]:
    """Each metric serve/metrics.py exports (with Ray's `ray_` prefix) and the labels it carries:
    its tag keys, the ones Serve adds, and `le` for a histogram."""
    import re

    text = (Path(__file__).resolve().parents[1] / "serve" / "metrics.py").read_text()
    out = {}
    for kind, body in re.findall(r"metrics\.(Counter|Gauge|Histogram)\((.*?)\)\n", text, re.S):
        name = re.search(r'"(barp_[a-z_]+)"', body).group(1)
        tags = re.search(r"tag_keys=\(([^)]*)\)", body)
        labels = set(re.findall(r'"(\w+)"', tags.group(1))) if tags else set()
        labels |= {"deployment", "replica", "application", "SessionName", "instance", "job"}
        if kind == "Histogram":
            for suffix in ("_bucket", "_count", "_sum"):
                out[f"ray_{name}{suffix}"] = labels | {"le"}
        else:
            out[f"ray_{name}"] = labels
    return out


def _selectors_and_groupings(node):
    """(metric name, labels its matchers name) of every selector, and (labels grouped by, the
    metric names below) of every aggregation, in a parsed PromQL expression."""
    import promql_parser as pp

    selectors, groupings = [], []

    def names(n) -> set[str]:
        if isinstance(n, pp.VectorSelector):
            return {n.name}
        return set().union(*(names(c) for c in children(n))) if children(n) else set()

    def children(n) -> list:
        kids = [getattr(n, a) for a in ("lhs", "rhs", "expr", "vector_selector", "param") if getattr(n, a, None) is not None]
        return kids + list(getattr(n, "args", None) or [])

    def walk(n) -> None:
        if isinstance(n, pp.VectorSelector):
            selectors.append((n.name, {m.name for m in n.matchers.matchers}))
        if isinstance(n, pp.AggregateExpr) and n.modifier is not None:
            groupings.append((set(n.modifier.labels), names(n)))
        for c in children(n):
            walk(c)

    walk(node)
    return selectors, groupings


def test_the_alert_rules_parse_and_read_only_exported_metrics_and_labels():
    import promql_parser

    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "barp-alerts.yaml").read_text())
    exported = _exported_metrics()
    seen = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"].startswith("Barp") and rule["alert"] not in seen
            seen.add(rule["alert"])
            assert rule["labels"]["severity"] in ("info", "warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["action"]
            selectors, groupings = _selectors_and_groupings(promql_parser.parse(rule["expr"]))
            assert selectors, rule["alert"]
            for name, labels in selectors:
                assert name in exported, (rule["alert"], name)
                assert labels <= exported[name] | {"__name__"}, (rule["alert"], name, labels - exported[name])
            for labels, names in groupings:
                assert all(labels <= exported[n] for n in names), (rule["alert"], labels, names)
            if "$labels." in str(rule["annotations"]):  # a summary naming a label needs it kept by the expression
                assert groupings and all("model" in g for g, _ in groupings), rule["alert"]
