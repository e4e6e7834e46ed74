"""The check worker of ``ninport convert`` (a helper process that checks and runs the written ONNX file).

Sessions live in ``ninport.runtimes.onnxruntime``; their names are re-exported here for older callers.
"""

from __future__ import annotations

import os

from ninport.errors import NinportError
from ninport.runtimes.onnxruntime import (  # noqa: F401 - re-exported
    CPU,
    CUDA,
    Session,
    _cache_path,
    cuda_available,
    make_session,
)

# --------------------------------------------------------------------------------------------------------
# A helper process for ``ninport convert``: it imports onnx and onnxruntime while the converter imports torch,
# then checks the written ONNX file (onnx.checker, full check) and runs it on the parity inputs while the
# converter computes the torch side and writes the .pt: two cores at work instead of one.

_WORKER_CODE = "from ninport.onnx.runtime import _check_worker_main; _check_worker_main()"


class CheckWorker:
    """The converter's side of the helper process. ``check`` sends one request, ``result`` waits for it.

    Only file paths cross the pipe (one JSON line each way); the inputs and outputs go through ``.npz``
    files in a private temporary directory.
    """

    def __init__(self) -> None:
        import subprocess
        import sys
        import tempfile
        import weakref

        self.tmpdir = tempfile.mkdtemp(prefix="ninport-check-")
        self._stderr = open(os.path.join(self.tmpdir, "stderr"), "w+")  # closed by _shutdown
        env = dict(os.environ)
        # The helper must import this very ninport, wherever it was imported from.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        # A conversion that fails before it reaches the checks drops the worker: the helper still ends.
        self._shutdown = weakref.finalize(self, _shutdown, self.proc, self._stderr, self.tmpdir)

    def check(self, model_path: str, inputs: dict[str, object], output_names: list[str], batches: list[int]) -> None:
        """Ask for a full onnx.checker check of ``model_path`` and one onnxruntime run per batch.

        ``inputs`` maps ``"{batch index}:{input name}"`` to arrays; outputs come back under
        ``"{batch index}:{output index}"``.
        """
        import json

        import numpy as np

        inputs_path = os.path.join(self.tmpdir, "inputs.npz")
        np.savez(inputs_path, **{f"i{k.replace(':', '_', 1)}": v for k, v in inputs.items()})
        request = {"model": model_path, "inputs": inputs_path, "input_keys": list(inputs),
                   "outputs": os.path.join(self.tmpdir, "outputs.npz"), "output_names": output_names,
                   "batches": len(batches)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:  # the helper is gone; result() says so and the caller checks in-process
            pass

    def result(self) -> dict:
        """The helper's answer: ``{"ok": True, "outputs": {key: array}}`` or ``{"error": kind, "message": ...}``;
        ``{"error": "crashed", ...}`` when the helper itself failed (the caller then checks in-process)."""
        import json

        import numpy as np

        line = self.proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().strip().splitlines()
            return {"error": "crashed", "message": tail[-1] if tail else "the check process stopped"}
        reply = json.loads(line)
        if reply.get("ok"):
            with np.load(reply["outputs"]) as data:
                reply["outputs"] = {key[1:].replace("_", ":", 1): data[key] for key in data.files}
        return reply

    def close(self) -> None:
        self._shutdown()


def _shutdown(proc, stderr, tmpdir: str) -> None:
    """End the helper (closing its stdin ends its loop), then remove its files."""
    import shutil
    import subprocess

    if proc.poll() is None:
        try:
            proc.stdin.close()  # ends the helper's request loop
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, stderr):
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:  # unflushed bytes for a helper that died
                pass
    shutil.rmtree(tmpdir, ignore_errors=True)


def start_check_worker() -> CheckWorker | None:
    """Start the helper process now (before torch is imported), or None where a helper cannot run."""
    if os.environ.get("NINPORT_CHECK_IN_PROCESS"):
        return None
    try:
        return CheckWorker()
    except OSError:
        return None


def _check_worker_main() -> None:
    """The helper process: import everything first, then answer requests until stdin closes."""
    import json
    import sys

    import numpy as np
    import onnx
    import onnx.checker
    import onnxruntime  # noqa: F401 - imported now, while the converter imports torch

    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _check_request(request, np, onnx)
        except Exception as exc:  # a bug or a broken runtime: the converter falls back to checking in-process
            reply = {"error": "crashed", "message": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    # Nothing is left to write or clean up here, and tearing down onnxruntime and numpy takes ~0.15 s that
    # the converter would spend waiting for this process to end.
    os._exit(0)


def _check_request(request: dict, np, onnx) -> dict:
    try:
        onnx.checker.check_model(request["model"], full_check=True)
    except onnx.checker.ValidationError as exc:
        return {"error": "checker", "message": str(exc).splitlines()[0]}
    try:
        session = make_session(request["model"], provider="cpu", threads=1).session  # torch has the other core
    except NinportError as exc:
        return {"error": "ninport", "message": str(exc)}
    outputs = {}
    with np.load(request["inputs"]) as data:
        arrays = {key: data[f"i{key.replace(':', '_', 1)}"] for key in request["input_keys"]}
    for index in range(request["batches"]):
        feeds = {key.split(":", 1)[1]: value for key, value in arrays.items() if key.split(":", 1)[0] == str(index)}
        for j, value in enumerate(session.run(request["output_names"], feeds)):
            outputs[f"o{index}_{j}"] = value
    np.savez(request["outputs"], **outputs)
    return {"ok": True, "outputs": request["outputs"]}
