"""A small, faithful stand-in for `kustomize build` covering the features our kustomizations use.

Used when neither `kubectl` nor `kustomize` is installed, and compared with `kubectl kustomize` when it
is (tests/test_deploy_kubernetes.py). Supported: resources (files and kustomization directories, also
outside the root, as kustomize allows for directories), namespace, labels, commonLabels, images, and
configMapGenerator with files / literals / per-generator options and generatorOptions. Anything else
fails loudly rather than being ignored, and so do the two rules kustomize enforces that matter here: a
generator may read files only at or below its kustomization's directory, and a name hash suffix is
not modelled (our generators switch it off).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "commonLabels",
    "configMapGenerator",
    "generatorOptions",
}


def load_docs(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and "kind" in d and "apiVersion" in d, (
            f"{path}: not a Kubernetes object: {d!r:.200}"
        )
    return docs


def pod_spec(obj: Obj) -> Obj | None:
    spec = obj.get("spec", {})
    if obj["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
        return spec["template"]["spec"]
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(obj: Obj, init: bool = True) -> list[Obj]:
    pod = pod_spec(obj)
    if pod is None:
        return []
    return list(pod.get("containers", [])) + (list(pod.get("initContainers", [])) if init else [])


def _generated_configmaps(directory: Path, k: Obj) -> list[tuple[Path, Obj]]:
    kfile = directory / "kustomization.yaml"
    if not k.get("configMapGenerator"):
        return []
    options = k.get("generatorOptions", {})
    unknown = set(options) - {"disableNameSuffixHash", "labels", "annotations"}
    assert not unknown, f"{kfile}: generatorOptions {sorted(unknown)} not handled by the offline resolver"
    assert options.get("disableNameSuffixHash") is True, (
        f"{kfile}: the offline resolver does not compute kustomize's name hash; set disableNameSuffixHash"
    )
    out = []
    for gen in k.get("configMapGenerator", []):
        unknown = set(gen) - {"name", "files", "literals", "options"}
        assert not unknown, f"{kfile}: configMapGenerator {gen.get('name')}: {sorted(unknown)} not handled"
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.rpartition("=")
            path = (directory / rel).resolve()
            # kustomize's default load restrictor: only files at or below the kustomization's directory.
            assert path.is_relative_to(directory.resolve()), (
                f"{kfile}: {rel} is outside the kustomization root; kustomize refuses it"
            )
            data[key or path.name] = path.read_text(encoding="utf-8")
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        meta: Obj = {"name": gen["name"]}
        for field in ("labels", "annotations"):
            merged = {**options.get(field, {}), **gen.get("options", {}).get(field, {})}
            if merged:
                meta[field] = merged
        out.append((kfile, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}))
    return out


def resolve(directory: Path, missing: list[str]) -> list[tuple[Path, Obj]]:
    """Objects of a kustomization with its generators run and namespace, labels and images applied.

    Each object comes with the file it was read from (for generated ConfigMaps: the kustomization).
    Resource paths that do not exist are appended to ``missing`` instead of failing at once.
    """
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    unknown = set(k) - SUPPORTED
    assert not unknown, (
        f"{kfile}: the offline resolver in {Path(__file__).name} does not handle {sorted(unknown)}"
    )
    objects: list[tuple[Path, Obj]] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if not path.exists():
            missing.append(str(path))
            continue
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), (
                f"{path}: a resource directory needs a kustomization.yaml"
            )
            objects.extend(resolve(path, missing))
        else:
            assert path.resolve().is_relative_to(directory.resolve()), (
                f"{kfile}: file {entry} is outside the kustomization root; kustomize refuses it"
            )
            objects.extend((path, d) for d in load_docs(path))
    objects.extend(_generated_configmaps(directory, k))
    objects = [(p, copy.deepcopy(o)) for p, o in objects]
    for _, obj in objects:
        meta = obj.setdefault("metadata", {})
        if k.get("namespace") and obj["kind"] != "Namespace":
            meta["namespace"] = k["namespace"]
        for spec in k.get("labels", []):
            meta.setdefault("labels", {}).update(spec["pairs"])
        meta.setdefault("labels", {}).update(k.get("commonLabels", {}))
        for image in k.get("images", []):
            for container in containers(obj):
                if container.get("image", "").split(":")[0] == image["name"]:
                    container["image"] = (
                        f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
                    )
    return objects
