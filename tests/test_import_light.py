"""Commands that only read Caffe files or tables never import torch, so they answer in well under a second.

Each check runs the command in a fresh interpreter (a test process has long since imported torch) and asks
that interpreter which modules it loaded.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, sys
exec(sys.argv.pop(1))  # what the control test loads first
from ninport.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
heavy = [m for m in ("torch", "onnx", "onnxruntime", "cv2", "openvino") if m in sys.modules]
print("\nMODULES " + json.dumps(heavy))
"""


def loaded_after(*args: str | Path, first: str = "") -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, first, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    marker = proc.stdout.rindex("MODULES ")
    return json.loads(proc.stdout[marker + len("MODULES "):]), proc.stdout[:marker]


def test_inspect_never_imports_torch(nin_prototxt: Path):
    heavy, out = loaded_after("inspect", nin_prototxt)
    assert "spatial trace" in out  # the command really ran
    assert "torch" not in heavy, heavy


def test_inspect_with_weights_never_imports_torch(nin_prototxt: Path, nin_weights_v1: Path):
    heavy, out = loaded_after("inspect", nin_prototxt, nin_weights_v1, "--json")
    assert json.loads(out)["total_params"] == 7_595_176
    assert "torch" not in heavy, heavy


def test_paper_never_imports_torch():
    assert importlib.util.find_spec("ninport.commands.paper") is not None  # the command exists: a lost one fails
    heavy, out = loaded_after("paper", "--json")
    assert out.strip()  # the command printed its tables
    assert "torch" not in heavy, heavy


def test_the_probe_sees_torch_when_it_is_loaded(nin_prototxt: Path):
    # The same probe with the torch side of ninport loaded first must report it: the checks above can fail.
    heavy, out = loaded_after("inspect", nin_prototxt, first="import ninport.torch.build")
    assert "spatial trace" in out and "torch" in heavy
