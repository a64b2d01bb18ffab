"""``cdd-serve --check-gpu``: is this Python environment ready to serve on a GPU, and if not, what to run.

The GPU packages clash with the CPU ones the base install brings: ``onnxruntime`` and ``onnxruntime-gpu``
both install the ``onnxruntime`` module, and with both present the CUDA execution provider goes missing;
``faiss-cpu`` and a ``faiss-gpu*`` wheel both install ``faiss``. So the ``[gpu]`` extra adds only TensorRT,
and docs/gpu.md has the step that swaps the CPU packages for the GPU ones. This check finds both packages
installed, a CUDA provider that is missing, no CUDA device, and an unsupported TensorRT, each with its fix.
`GpuEnvironment.detect` reads this environment; the checks take a `GpuEnvironment`, so they can be shown a
described one.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field

from serving.backends.tensorrt_stamp import SUPPORTED_TENSORRT_MAJORS

__all__ = ["GpuEnvironment", "check_gpu_main", "gpu_problems"]

_WATCHED = ("onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11",
            "faiss-gpu-cuvs", "faiss-gpu-cu12-cuvs", "faiss-gpu-cu13-cuvs", "tensorrt", "torch")
_SWAP_ORT = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.18'"


@dataclass(frozen=True)
class GpuEnvironment:
    """What serving on a GPU depends on: installed ``distributions`` (name -> version, of the watched
    packages), ONNX Runtime's available providers, the CUDA device torch sees (None: none), the importable
    TensorRT version (None: none) and the GPUs faiss sees."""

    distributions: dict[str, str] = field(default_factory=dict)
    ort_providers: tuple[str, ...] = ()
    cuda_device: str | None = None
    tensorrt_version: str | None = None
    tensorrt_error: str | None = None
    faiss_gpus: int = 0

    @classmethod
    def detect(cls) -> GpuEnvironment:
        """Read this environment (imports onnxruntime, torch, faiss and tensorrt where installed)."""
        installed = {}
        for name in _WATCHED:
            try:
                installed[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
        return cls(installed, _providers(), _cuda_device(), *_tensorrt(), _faiss_gpus())


def _providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except Exception:  # not installed, or a broken mix of both packages
        return ()
    return tuple(onnxruntime.get_available_providers())


def _cuda_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _tensorrt() -> tuple[str | None, str | None]:
    try:
        import tensorrt
    except ImportError:
        return None, None
    except Exception as exc:  # installed but unusable (libraries missing)
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    return str(tensorrt.__version__), None


def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _package_problems(env: GpuEnvironment) -> list[str]:
    have = env.distributions
    problems = []
    if "onnxruntime" in have and "onnxruntime-gpu" in have:
        problems.append(f"onnxruntime {have['onnxruntime']} and onnxruntime-gpu {have['onnxruntime-gpu']} are both "
                        f"installed: they share the onnxruntime module and the CUDA provider goes missing; {_SWAP_ORT}")
    elif "onnxruntime-gpu" not in have:
        problems.append(f"onnxruntime-gpu is not installed (the onnxruntime-cuda backend needs it); {_SWAP_ORT}")
    gpu_faiss = sorted(name for name in have if name.startswith("faiss-gpu"))
    if "faiss-cpu" in have and gpu_faiss:
        problems.append(f"faiss-cpu and {', '.join(gpu_faiss)} are both installed: they share the faiss module; "
                        f"pip uninstall -y faiss-cpu {' '.join(gpu_faiss)} && pip install {gpu_faiss[0]}")
    return problems


def gpu_problems(env: GpuEnvironment) -> list[str]:
    """Each reason ``env`` cannot serve on a GPU with every backend, with the command that fixes it."""
    problems = _package_problems(env)
    if env.cuda_device is None:
        problems.append("no CUDA device visible to torch (torch.cuda.is_available() is False): check nvidia-smi and "
                        "that torch is a CUDA build")
    if "onnxruntime-gpu" in env.distributions and "CUDAExecutionProvider" not in env.ort_providers:
        problems.append(f"onnxruntime offers {', '.join(env.ort_providers) or 'no providers'}, not "
                        "CUDAExecutionProvider: check the CUDA and cuDNN libraries onnxruntime-gpu needs, or "
                        f"{_SWAP_ORT}")
    if env.tensorrt_error is not None:
        problems.append(f"tensorrt is installed but cannot be imported ({env.tensorrt_error})")
    elif env.tensorrt_version is None:
        problems.append("tensorrt is not installed (the tensorrt backend needs it); pip install 'cdd-retrieval[gpu]'")
    elif int(env.tensorrt_version.split(".")[0]) not in SUPPORTED_TENSORRT_MAJORS:
        problems.append(f"tensorrt {env.tensorrt_version} is not supported (majors {SUPPORTED_TENSORRT_MAJORS}); "
                        "pip install 'tensorrt>=10,<12'")
    return problems


def _summary(env: GpuEnvironment) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in sorted(env.distributions.items()))
    return [
        f"cuda device: {env.cuda_device or 'none'}",
        f"packages: {packages or 'none of the watched ones'}",
        f"onnxruntime providers: {', '.join(env.ort_providers) or 'none'}",
        f"tensorrt: {env.tensorrt_version or 'not importable'}",
        f"faiss GPUs: {env.faiss_gpus}",
    ]


def check_gpu_main(env: GpuEnvironment | None = None) -> int:
    """Print the environment and its problems; 0 when there are none, 1 otherwise."""
    env = env if env is not None else GpuEnvironment.detect()
    problems = gpu_problems(env)
    print("\n".join(f"cdd-serve --check-gpu: {line}" for line in _summary(env)))
    for problem in problems:
        print(f"cdd-serve --check-gpu: problem: {problem}", file=sys.stderr)
    print(f"cdd-serve --check-gpu: {'ready to serve on the GPU' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1
