"""The GPU environment: ``cdd-serve --check-gpu`` on described and real environments, and the ``[gpu]`` extra
resolved by pip (``pip install --dry-run --report``) never bringing onnxruntime and onnxruntime-gpu together."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from serving.gpu_environment import GpuEnvironment, check_gpu_main, gpu_problems

ROOT = Path(__file__).resolve().parents[2]
_READY = GpuEnvironment(
    distributions={"onnxruntime-gpu": "1.31.1", "faiss-gpu-cu12": "1.14.1", "tensorrt": "11.4.0.106"},
    ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    cuda_device="NVIDIA H100 80GB HBM3", tensorrt_version="11.4.0.106", faiss_gpus=1,
)


def test_a_ready_environment_has_no_problems(capsys):
    assert gpu_problems(_READY) == []
    assert check_gpu_main(_READY) == 0
    out = capsys.readouterr().out
    assert "cuda device: NVIDIA H100 80GB HBM3" in out and "ready to serve on the GPU" in out


def test_both_onnxruntime_packages_are_found_with_the_fix(capsys):
    both = GpuEnvironment(**{**_READY.__dict__, "distributions": {**_READY.distributions, "onnxruntime": "1.32.0"},
                             "ort_providers": ("CPUExecutionProvider",)})
    problems = gpu_problems(both)
    assert problems[0] == ("onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are both installed: they share the "
                           "onnxruntime module and the CUDA provider goes missing; pip uninstall -y onnxruntime "
                           "onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.18'")
    assert problems[1].startswith("onnxruntime offers CPUExecutionProvider, not CUDAExecutionProvider")
    assert len(problems) == 2 and check_gpu_main(both) == 1
    assert "problem: onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are both installed" in capsys.readouterr().err


def test_other_gpu_problems_are_named():
    env = GpuEnvironment(**{**_READY.__dict__, "distributions": {**_READY.distributions, "faiss-cpu": "1.15.1"},
                            "tensorrt_version": "12.0.1", "cuda_device": None})
    assert gpu_problems(env) == [
        "faiss-cpu and faiss-gpu-cu12 are both installed: they share the faiss module; pip uninstall -y faiss-cpu "
        "faiss-gpu-cu12 && pip install faiss-gpu-cu12",
        "no CUDA device visible to torch (torch.cuda.is_available() is False): check nvidia-smi and that torch is a "
        "CUDA build",
        "tensorrt 12.0.1 is not supported (majors (10, 11)); pip install 'tensorrt>=10,<12'",
    ]


def test_check_gpu_on_this_machine_says_what_is_missing():
    env = GpuEnvironment.detect()
    done = subprocess.run([sys.executable, "-m", "serving.server", "--check-gpu"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == (0 if not gpu_problems(env) else 1)
    assert f"cuda device: {env.cuda_device or 'none'}" in done.stdout
    assert [line.split("problem: ", 1)[1] for line in done.stderr.splitlines() if "problem: " in line] == \
        gpu_problems(env)


def _requirements(extra: str) -> tuple[list[str], list[str]]:
    """(base + ``extra`` requirements pip can resolve from PyPI, the TensorRT ones it cannot)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"][extra]]
    nvidia = [r for r in wanted if r.lower().startswith("tensorrt")]
    return [r for r in wanted if r not in nvidia], nvidia


def _resolve(requirements: list[str], report: Path) -> list[str]:
    """Names pip would install into an empty environment for ``requirements`` (skips when no index answers)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), "-c", str(ROOT / "constraints.txt"), *requirements],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if done.returncode != 0:
        offline = ("Could not find a version", "NewConnectionError", "Max retries", "Temporary failure",
                   "No matching distribution", "pypi.nvidia.com")
        if any(text in done.stderr for text in offline):
            pytest.skip(f"the package index cannot resolve {requirements}: {done.stderr.strip().splitlines()[-1]}")
        raise AssertionError(f"pip --dry-run failed:\n{done.stderr[-2000:]}")
    return sorted(item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"])


def _clashes(names: list[str]) -> list[str]:
    clashes = []
    if "onnxruntime" in names and "onnxruntime-gpu" in names:
        clashes.append("onnxruntime + onnxruntime-gpu")
    if "faiss-cpu" in names and any(name.startswith("faiss-gpu") for name in names):
        clashes.append("faiss-cpu + faiss-gpu")
    return clashes


@pytest.mark.slow
def test_gpu_extra_never_installs_both_onnxruntime_packages(tmp_path):
    """The base and ``[gpu]`` requirements resolved by pip. TensorRT's wheels are stubs that fetch their
    metadata from pypi.nvidia.com, so they are resolved separately, where that index answers."""
    resolvable, nvidia = _requirements("gpu")
    names = _resolve(resolvable, tmp_path / "report.json")
    assert "onnxruntime" in names or "onnxruntime-gpu" in names
    assert _clashes(names) == [], names
    assert nvidia == ["tensorrt>=10,<12"]


@pytest.mark.slow
def test_gpu_extra_with_tensorrt_resolves_without_clashes(tmp_path):
    try:
        urllib.request.urlopen("https://pypi.nvidia.com", timeout=5)
    except OSError as exc:
        pytest.skip(f"pypi.nvidia.com (where the tensorrt wheels fetch their metadata) is unreachable: {exc}")
    names = _resolve([f"{ROOT}[gpu]"], tmp_path / "report.json")
    assert any(name.startswith("tensorrt") for name in names) and _clashes(names) == [], names

