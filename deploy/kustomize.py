"""A small renderer of the kustomize subset k8s/ uses, for machines without kustomize or kubectl.

Supported kustomization fields: ``resources`` (files and directories), ``namespace``, ``labels`` (without
``includeSelectors``), ``images``, ``replicas`` and ``patches`` (strategic merge for maps and for the
named lists below; JSON 6902 add/replace/remove/test). Anything else raises :class:`KustomizeError`
instead of being ignored, so the output never silently differs from kustomize's. Transformers run in
kustomize's order: patches, namespace, labels, replicas, images. tests/test_deployments.py compares the
output with ``kubectl kustomize`` wherever kubectl is installed.

    python -m deploy.kustomize k8s/overlays/prod > manifests.yaml
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "RuntimeClass",
}
SCALABLE = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
# Strategic-merge keys of the lists k8s/ patches (Kubernetes' patchMergeKey); other lists are replaced.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
    "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
}
# kustomize's legacy output order; kinds not listed go between these two groups.
ORDER_FIRST = [
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
    "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
    "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render exactly as kustomize would."""


def build(directory: Path | str) -> list[Doc]:
    """The resources of the kustomization in ``directory``, transformed, in kustomize's order."""
    docs = _build(Path(directory))
    return sorted(docs, key=_order)


def dump(docs: list[Doc]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=True, default_flow_style=False)


def _build(directory: Path) -> list[Doc]:
    kustomization = _kustomization(directory)
    unsupported = sorted(set(kustomization) - SUPPORTED)
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization field(s) {', '.join(unsupported)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources") or []:
        path = directory / entry
        docs.extend(_build(path) if path.is_dir() else _load(path))
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{directory}: {key[0]} {key[2]} is defined twice")
        seen.add(key)
    for patch in kustomization.get("patches") or []:
        _patch(directory, docs, patch)
    if kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for label in kustomization.get("labels") or []:
        _label(directory, docs, label)
    for replica in kustomization.get("replicas") or []:
        for doc in docs:
            if doc["kind"] in SCALABLE and doc["metadata"]["name"] == replica["name"]:
                doc.setdefault("spec", {})["replicas"] = replica["count"]
    for image in kustomization.get("images") or []:
        for doc in docs:
            _retag(doc, image)
    return docs


def _kustomization(directory: Path) -> Doc:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            data = yaml.safe_load((directory / name).read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise KustomizeError(f"{directory / name}: not a mapping")
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _load(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise KustomizeError(f"{path}: every document needs apiVersion, kind and metadata")
    return docs


def _order(doc: Doc) -> tuple[int, str, str, str, str]:
    kind = doc["kind"]
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind)
    elif kind in ORDER_LAST:
        rank = len(ORDER_FIRST) + 1 + ORDER_LAST.index(kind)
    else:
        rank = len(ORDER_FIRST)
    # kinds in between: by group_version_kind, as kustomize compares them
    gvk = "_".join([*doc["apiVersion"].rpartition("/")[::2], kind])
    return rank, gvk, kind, doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


# ---- labels and images ------------------------------------------------------------------------------


def _label(directory: Path, docs: list[Doc], label: Doc) -> None:
    if label.get("includeSelectors") or set(label) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise KustomizeError(f"{directory}: labels supports only pairs and includeTemplates")
    pairs = {str(k): str(v) for k, v in (label.get("pairs") or {}).items()}
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(pairs)
        template = doc.get("spec", {}).get("template") if label.get("includeTemplates") else None
        if isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


def _retag(node: Any, image: Doc) -> None:
    """kustomize's image transformer: every container and initContainer, wherever it sits."""
    if isinstance(node, list):
        for item in node:
            _retag(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in {"containers", "initContainers"} and isinstance(value, list):
            for container in value:
                container["image"] = _new_image(container.get("image", ""), image)
        else:
            _retag(value, image)


def _new_image(current: str, image: Doc) -> str:
    match = _IMAGE.match(current)
    if not match or match["name"] != image["name"]:
        return current
    name = image.get("newName", match["name"])
    if image.get("digest"):
        return f"{name}@{image['digest']}"
    if image.get("newTag"):
        return f"{name}:{image['newTag']}"
    tag = f":{match['tag']}" if match["tag"] else ""
    digest = f"@{match['digest']}" if match["digest"] else ""
    return f"{name}{tag}{digest}"


# ---- patches ----------------------------------------------------------------------------------------


def _patch(directory: Path, docs: list[Doc], entry: Doc) -> None:
    if set(entry) - {"path", "patch", "target"} or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path or patch (and may have a target)")
    text = (directory / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):  # JSON 6902: a list of operations, applied to every target
        if not target:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        matched = [d for d in docs if _selected(d, target, directory)]
        for doc in matched:
            for op in body:
                _json6902(doc, op, directory)
    elif isinstance(body, dict):
        matched = [d for d in docs if _selected(d, target, directory)] if target else [
            d for d in docs
            if d["kind"] == body.get("kind") and d["metadata"]["name"] == body.get("metadata", {}).get("name")
        ]
        for doc in matched:
            _merge(doc, body, directory)
    else:
        raise KustomizeError(f"{directory}: a patch is a mapping (strategic merge) or a list (JSON 6902)")
    if not matched:
        raise KustomizeError(f"{directory}: patch {entry.get('path') or target} matches no resource")


def _selected(doc: Doc, target: Doc, directory: Path) -> bool:
    if set(target) - {"kind", "name", "group", "version"}:
        raise KustomizeError(f"{directory}: patch targets may select by kind, name, group and version only")
    group, _, version = doc["apiVersion"].rpartition("/")
    checks = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version}
    # kustomize matches these as anchored regular expressions
    return all(re.fullmatch(str(pattern), checks[key]) for key, pattern in target.items())


def _merge(base: Doc, patch: Doc, directory: Path) -> None:
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise KustomizeError(f"{directory}: strategic-merge directive {key} is not supported")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, directory)
        elif isinstance(value, list) and isinstance(base.get(key), list) and key in MERGE_KEYS:
            merge_key = MERGE_KEYS[key]
            items = base[key]
            for item in value:
                existing = next((i for i in items if i.get(merge_key) == item.get(merge_key)), None)
                if existing is None:
                    items.append(copy.deepcopy(item))
                else:
                    _merge(existing, item, directory)
        else:
            base[key] = copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(doc: Doc, op: Doc, directory: Path) -> None:
    kind = op.get("op")
    if kind not in {"add", "replace", "remove", "test"}:
        raise KustomizeError(f"{directory}: JSON 6902 op {kind!r} is not supported")
    *parents, last = _pointer(op["path"])
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if kind == "test":
        actual = node[int(last)] if isinstance(node, list) else node.get(last)
        if actual != op["value"]:
            raise KustomizeError(f"{directory}: JSON 6902 test failed at {op['path']}")
    elif isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "remove":
            del node[index]
        else:
            node[index] = copy.deepcopy(op["value"])
    else:
        if kind != "add" and last not in node:
            raise KustomizeError(f"{directory}: JSON 6902 {kind} of missing {op['path']}")
        if kind == "remove":
            del node[last]
        else:
            node[last] = copy.deepcopy(op["value"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.kustomize DIRECTORY", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(dump(build(args[0])))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
