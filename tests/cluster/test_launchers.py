"""The cluster launchers (ray up, KubeRay, Slurm) and the job runtime environment: required fields,
and enough resources for the training configs they name (`# labrl-configs:` lines), checked with
the same fit rules labrl applies to a live cluster before any actor starts."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import ray
import yaml

from cluster.placement import plan_placement
from cluster.resources import fit_problems
from configs.loading import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
SLURM = CLUSTER / "slurm" / "labrl.sbatch"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"


def referenced_configs(path: Path) -> list[str]:
    match = re.search(r"^# labrl-configs: (.+)$", path.read_text(), re.M)
    assert match, f"{path.name}: no '# labrl-configs:' line naming the training configs it is sized for"
    return match.group(1).split()


# ---------------------------------------------------------------- node inventories per launcher
def aws_nodes() -> list[dict[str, float]]:
    doc = yaml.safe_load(AWS.read_text())
    types = doc["available_node_types"]
    nodes = [dict(types[doc["head_node_type"]]["resources"])]
    for name, t in types.items():
        if name != doc["head_node_type"]:
            nodes += [dict(t["resources"])] * t.get("min_workers", 0)
    return nodes


def _kube_quantity(value) -> float:
    return float(str(value).rstrip("m")) / (1000 if str(value).endswith("m") else 1)


def kuberay_nodes(spec: dict) -> list[dict[str, float]]:
    """Ray resources of every pod at minReplicas: CPUs/GPUs from container limits (unless
    rayStartParams overrides num-cpus), custom resources from rayStartParams."""
    def pod(params: dict, template: dict) -> dict[str, float]:
        limits = template["spec"]["containers"][0]["resources"]["limits"]
        res = {"CPU": _kube_quantity(params.get("num-cpus", limits.get("cpu", 0))),
               "GPU": float(limits.get("nvidia.com/gpu", 0))}
        if "resources" in params:
            res.update(yaml.safe_load(yaml.safe_load(params["resources"])))
        return res

    nodes = [pod(spec["headGroupSpec"]["rayStartParams"], spec["headGroupSpec"]["template"])]
    for group in spec["workerGroupSpecs"]:
        nodes += [pod(group["rayStartParams"], group["template"])] * group["minReplicas"]
    return nodes


def sbatch_directives() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SLURM.read_text(), re.M))


def slurm_nodes() -> list[dict[str, float]]:
    d = sbatch_directives()
    return [{"CPU": float(d["cpus-per-task"]), "GPU": float(d["gpus-per-task"])}] * int(d["nodes"])


INVENTORIES = {
    AWS: aws_nodes,
    RAYCLUSTER: lambda: kuberay_nodes(yaml.safe_load(RAYCLUSTER.read_text())["spec"]),
    RAYJOB: lambda: kuberay_nodes(yaml.safe_load(RAYJOB.read_text())["spec"]["rayClusterSpec"]),
    SLURM: slurm_nodes,
}
PAIRS = [(launcher, config) for launcher in INVENTORIES for config in referenced_configs(launcher)]


def _pair_id(pair) -> str:
    return f"{pair[0].name}:{Path(pair[1]).stem}"


@pytest.mark.parametrize("launcher, config", PAIRS, ids=[_pair_id(p) for p in PAIRS])
def test_launcher_has_the_resources_of_every_role(launcher, config):
    plan = plan_placement(load_config(ROOT / config))
    nodes = INVENTORIES[launcher]()
    assert fit_problems(plan.demands, nodes) == []
    gpus = sum(d.total().get("GPU", 0.0) for d in plan.demands)
    assert sum(n.get("GPU", 0.0) for n in nodes) >= gpus > 0


@pytest.mark.parametrize("launcher, config", [
    pytest.param(launcher, config, id=_pair_id((launcher, config))) for launcher, config in PAIRS])
def test_launcher_fits_the_joint_placement_layout(launcher, config):
    """With the packing the weight-sync transport needs (shm: one node; nccl: per-role groups)."""
    plan = plan_placement(load_config(ROOT / config))
    assert fit_problems(plan.demands, INVENTORIES[launcher](), plan.joint) == []


# ---------------------------------------------------------------- required fields
def test_ray_up_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    doc = yaml.safe_load(AWS.read_text())
    validate_config(prepare_config(doc))
    assert doc["file_mounts"] == {"~/labrl": "."}
    assert {".venv", "runs"} <= set(doc["rsync_exclude"])
    assert any("pip install" in c and "labrl[gpu]" in c for c in doc["setup_commands"])
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in doc["worker_start_ray_commands"])
    gpu_types = [t for t in doc["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["min_workers"] == t["max_workers"] for t in gpu_types)


def _check_raycluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    images = {head["template"]["spec"]["containers"][0]["image"]}
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        images.add(container["image"])
        res = container["resources"]
        if res["limits"].get("nvidia.com/gpu"):
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, "GPU pods need a memory-backed /dev/shm (shm sync, NCCL)"
    assert len(images) == 1, f"head and workers must run one image, got {images}"


def test_kuberay_raycluster_manifest():
    doc = yaml.safe_load(RAYCLUSTER.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster") and doc["metadata"]["name"]
    _check_raycluster_spec(doc["spec"])


def test_kuberay_rayjob_manifest():
    doc = yaml.safe_load(RAYJOB.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob") and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "launch.train"]
    config = argv[argv.index("--config") + 1]
    assert config.startswith("/home/ray/labrl/")  # where cluster/docker/Dockerfile.gpu installs labrl
    local = config.removeprefix("/home/ray/labrl/")
    assert [local] == referenced_configs(RAYJOB)
    load_config(ROOT / local, [a for a in argv[argv.index("--config") + 2:]])
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "TOKENIZERS_PARALLELISM" not in env.get("env_vars", {})
    _check_raycluster_spec(spec["rayClusterSpec"])


def test_slurm_script_starts_head_workers_and_submits():
    text = SLURM.read_text()
    subprocess.run(["bash", "-n", str(SLURM)], check=True)
    d = sbatch_directives()
    assert d["ntasks-per-node"] == "1" and int(d["nodes"]) >= 2
    assert "ray start --head" in text and 'ray start --address="$gcs"' in text
    assert "--exclude=\"$head\"" in text, "workers must not start a second raylet on the head node"
    assert "ray job submit --runtime-env cluster/runtime_env.yaml --working-dir ." in text
    assert "trap stop_ray EXIT" in text
    default = re.search(r"CONFIG=\$\{LABRL_CONFIG:-(\S+)\}", text).group(1)
    assert default == referenced_configs(SLURM)[0]
    load_config(ROOT / default)


def test_dockerfile_installs_every_package_on_rays_image():
    text = (CLUSTER / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py311-gpu$", text, re.M)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        assert re.search(rf"^COPY .* {pkg.rstrip('*')} {pkg.rstrip('*')}$", text, re.M), pkg
    assert 'pip install --no-cache-dir -e ".[gpu]"' in text


# ---------------------------------------------------------------- job runtime environment
def test_runtime_env_uploads_code_but_not_venv_or_runs(tmp_path):
    """Package the repository the way `ray job submit --working-dir .` does, with .gitignore
    switched off, so the explicit excludes alone must keep the upload small."""
    from ray._private.runtime_env.packaging import create_package

    env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert "working_dir" not in env  # given on the command line (--working-dir .)
    assert "TOKENIZERS_PARALLELISM" not in env.get("env_vars", {})
    target = tmp_path / "pkg.zip"
    create_package(str(ROOT), target, include_gitignore=False, excludes=env["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert "launch/train.py" in names and "configs/default.yaml" in names
    assert not [n for n in names if n.startswith((".venv/", ".venv-nemo-gym/", "runs/", ".git/")) or "__pycache__" in n]
    assert target.stat().st_size < 20 * 2**20
