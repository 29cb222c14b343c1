"""Static checks of the deployments, run by tests/test_deployments.py and usable alone:

    python -m deploy.validate        # exit 1 and one line per problem

- ``docker-compose.yml``, interpolated with ``.env.example`` as ``docker compose`` would, against the
  vendored Compose Specification schema (deploy/schema/), plus what the schema cannot see: every
  ``depends_on`` names a service, every named volume is declared, every build target exists;
- every manifest rendered from each k8s overlay (``kubectl kustomize``; kubectl must be on PATH) against
  the Kubernetes OpenAPI schemas of ``KUBERNETES_VERSION`` (the ``kubernetes-validate`` package, strict:
  unknown fields are errors).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SCHEMA = ROOT / "deploy" / "schema" / "compose-spec.json"
OVERLAYS = (ROOT / "k8s" / "overlays" / "dev", ROOT / "k8s" / "overlays" / "prod")
KUBERNETES_VERSION = "1.31.0"  # the oldest Kubernetes release the manifests are checked against

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class KustomizeError(RuntimeError):
    """``kubectl kustomize`` is missing or failed to render a directory."""


def render(directory: Path | str) -> list[dict[str, Any]]:
    """The manifests ``kubectl kustomize DIRECTORY`` renders, in its order."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise KustomizeError(
            "kubectl not found on PATH: the k8s checks render overlays with `kubectl kustomize` "
            "(install kubectl >= 1.27)"
        )
    result = subprocess.run(  # noqa: S603 (a fixed command on a path of ours)
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class InterpolationError(ValueError):
    """A ${VAR:?message} whose variable is unset or empty, or a malformed ${...}."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped (the subset .env.example uses)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InterpolationError(f"{path.name}: not KEY=VALUE: {key[:40]!r}")
        env[key.strip()] = value.strip()
    return env


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return _VARIABLE.sub(lambda m: _substitute(m, env), node)
    return node


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    if match["plain"]:
        return env.get(match["plain"], "")
    parts = _BRACED.match(match["braced"])
    if not parts:
        raise InterpolationError(f"malformed ${{{match['braced']}}}")
    name, op, arg = parts["name"], parts["op"], interpolate(parts["arg"] or "", env)
    value = env.get(name)
    empty = value is None or (value == "" and op is not None and op.startswith(":"))
    if op in {":-", "-"}:
        return arg if empty else str(value)
    if op in {":?", "?"}:
        if empty:
            raise InterpolationError(f"{name} is required: {arg}")
        return str(value)
    if op in {":+", "+"}:
        return "" if empty else arg
    return value or ""


def compose_errors(compose_file: Path = COMPOSE_FILE, env_file: Path = ENV_EXAMPLE) -> list[str]:
    """Everything wrong with the compose file, as it would be run with ``env_file`` as its .env."""
    raw = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    try:
        compose = interpolate(raw, read_env_file(env_file))
    except InterpolationError as exc:
        return [f"{compose_file.name}: {exc}"]
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{compose_file.name}: /{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return errors + _compose_references(compose, compose_file)


def _compose_references(compose: dict[str, Any], compose_file: Path) -> list[str]:
    services = compose.get("services") or {}
    volumes = set(compose.get("volumes") or {})
    errors = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for target in depends if isinstance(depends, list) else depends.keys():
            if target not in services:
                errors.append(f"{compose_file.name}: {name} depends on unknown service {target}")
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                errors.append(f"{compose_file.name}: {name} mounts undeclared volume {source}")
        build_spec = service.get("build")
        if isinstance(build_spec, dict) and build_spec.get("target"):
            context = compose_file.parent / build_spec.get("context", ".")
            dockerfile = context / build_spec.get("dockerfile", "Dockerfile")
            if build_spec["target"] not in dockerfile_targets(dockerfile):
                errors.append(f"{compose_file.name}: {name} builds target {build_spec['target']} not in {dockerfile}")
    return errors


def dockerfile_targets(dockerfile: Path) -> set[str]:
    """The stage names (``FROM ... AS name``) of a Dockerfile."""
    text = dockerfile.read_text(encoding="utf-8")
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$", text))


def manifest_errors(overlay: Path, version: str = KUBERNETES_VERSION) -> list[str]:
    """Everything wrong with the manifests one overlay renders to."""
    try:
        docs = render(overlay)
    except KustomizeError as exc:
        return [f"{overlay.name}: {exc}"]
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            errors.append(f"{overlay.name}: {doc['kind']} {doc['metadata']['name']}: /{path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{overlay.name}: {doc['kind']} {doc['apiVersion']} is not in Kubernetes {version}")
    return errors


def main() -> int:
    problems = compose_errors()
    counts = []
    for overlay in OVERLAYS:
        problems += manifest_errors(overlay)
        try:
            counts.append(f"{overlay.name}: {len(render(overlay))} manifests")
        except KustomizeError:
            counts.append(f"{overlay.name}: not rendered")
    for problem in problems:
        print(problem)
    print(
        f"docker-compose.yml and k8s ({'; '.join(counts)}; Kubernetes {KUBERNETES_VERSION}): {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
