"""Both installs resolve to exactly one onnxruntime build: ``pip install ninport`` to the CPU one,
``pip install ninport-gpu`` (packaging/ninport-gpu) to onnxruntime-gpu with the CUDA and cuDNN wheels it loads.

pip resolves each project for real (``pip install --dry-run --report``, which asks the package index) into an
empty environment. torch is marked installed there, so the resolver does not walk torch's own CUDA wheels (the
slow part); that torch requires no onnxruntime build is checked from its metadata instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
GPU_DIR = ROOT / "packaging" / "ninport-gpu"
ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}
_OFFLINE = re.compile(r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|"
                      r"Could not fetch URL|ConnectTimeout|ReadTimeout|No matching distribution found for "
                      r"(setuptools|onnxruntime|numpy)", re.I)


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _empty_env(directory: Path) -> Path:
    """A virtual environment with nothing but a torch record (no pip, no files): its python for ``pip --python``."""
    venv.create(directory, with_pip=False)
    python = directory / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    record = Path(purelib) / "torch-2.13.0.dist-info"
    record.mkdir(parents=True)
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    (record / "RECORD").write_text("")
    return python


@pytest.fixture(scope="session")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """{"cpu": what pip would install for the root project, "gpu": for packaging/ninport-gpu}, side by side."""
    if not GPU_DIR.joinpath("pyproject.toml").exists():
        pytest.fail("packaging/ninport-gpu/pyproject.toml is missing")
    work = tmp_path_factory.mktemp("resolve")
    python = _empty_env(work / "env")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    procs = {}
    for kind, project in (("cpu", ROOT), ("gpu", GPU_DIR)):
        procs[kind] = subprocess.Popen(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
             "--report", str(work / f"{kind}.json"), str(project)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: dict[str, set[str]] = {}
    for kind, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.skip("pip could not resolve within 10 minutes (is the package index reachable?)")
        if proc.returncode != 0:
            if _OFFLINE.search(stderr):
                pytest.skip(f"the package index cannot be reached: {_OFFLINE.search(stderr).group(0)}")
            pytest.fail(f"pip could not resolve the {kind} install:\n{stderr[-2000:]}")
        report = json.loads((work / f"{kind}.json").read_text())
        out[kind] = {_name(item["metadata"]["name"]) for item in report["install"]}
    return out


def test_cpu_install_has_the_cpu_build_only(resolved):
    cpu = resolved["cpu"]
    assert "ninport" in cpu
    assert cpu & ORT_BUILDS == {"onnxruntime"}
    assert not {n for n in cpu if n.startswith("nvidia-")}, "the CPU install pulls CUDA wheels"


def test_gpu_install_has_the_gpu_build_and_its_cuda_libraries(resolved):
    gpu = resolved["gpu"]
    assert "ninport-gpu" in gpu
    assert gpu & ORT_BUILDS == {"onnxruntime-gpu"}
    # onnxruntime-gpu's own cuda/cudnn extras: the runtime, cuBLAS and cuDNN as wheels (preload_dlls loads them).
    for prefix in ("nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn"):
        assert any(n.startswith(prefix) for n in gpu), f"no {prefix} wheel in the GPU install: {sorted(gpu)}"


def test_torch_requires_no_onnxruntime_build():
    """The resolution above takes torch as installed; this is why that leaves the onnxruntime sets unchanged."""
    requires = metadata.requires("torch") or []
    assert not {_name(re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0]) for r in requires} & ORT_BUILDS


def test_the_gpu_project_is_the_same_project_but_for_onnxruntime():
    """packaging/ninport-gpu builds the same package: same version, code and requirements except the build."""
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = tomllib.loads((GPU_DIR / "pyproject.toml").read_text())["project"]
    assert (GPU_DIR / "ninport").resolve() == (ROOT / "ninport").resolve()
    assert gpu["version"] == main["version"] and gpu["requires-python"] == main["requires-python"]
    assert gpu["scripts"] == main["scripts"]

    def split(deps):
        names = {_name(re.split(r"[\s;<>=!~\[]", d, maxsplit=1)[0]): d for d in deps}
        return {n: d for n, d in names.items() if n not in ORT_BUILDS}, {n for n in names if n in ORT_BUILDS}

    main_rest, main_ort = split(main["dependencies"])
    gpu_rest, gpu_ort = split(gpu["dependencies"])
    assert main_rest == gpu_rest
    assert main_ort == {"onnxruntime"} and gpu_ort == {"onnxruntime-gpu"}
    assert "onnxruntime-gpu[cuda,cudnn]" in " ".join(gpu["dependencies"]).replace(" ", "")
    user_extras = {k: v for k, v in main["optional-dependencies"].items() if k != "dev"}
    assert gpu["optional-dependencies"] == user_extras
    for extra, deps in user_extras.items():  # an extra bringing the CPU build back would undo the split
        assert not split(deps)[1], f"extra {extra!r} requires an onnxruntime build: {deps}"
    assert "gpu" not in main["optional-dependencies"], "an extra cannot remove the CPU build; see packaging/"
