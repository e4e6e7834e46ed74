"""The converted PyTorch module itself as a runtime, on the CPU (or CUDA when asked and present)."""

from __future__ import annotations

import os

import numpy as np

from ninport.errors import NinportError, RuntimeUnavailableError
from ninport.runtimes.base import Runtime


class TorchModule(Runtime):
    """``model``: an ``nn.Module`` built by ninport, a ``.pt`` file, or a function that returns the module.
    Outputs are the module's output blobs; extra outputs are not offered (use the ONNX runtimes for blobs)."""

    kind = "torch"

    def __init__(self, model, *, provider: str, precision: str, threads: int, extra_outputs: list[str], warn):
        import torch

        if extra_outputs:
            raise NinportError("the torch runtime returns the module's outputs only; ask an ONNX runtime for blobs")
        if isinstance(model, str | os.PathLike):
            from ninport.torch.build import load_pt

            model = load_pt(os.fspath(model))
        elif callable(model) and not isinstance(model, torch.nn.Module):
            model = model()
        torch.set_num_threads(threads)
        device = "cpu"
        if provider in ("cuda", "tensorrt") or (provider == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise RuntimeUnavailableError(f"--provider {provider}: torch sees no CUDA device")
            device = "cuda"
        self.torch = torch
        self.device = device
        self.provider = device
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.module = model.eval().to(device=device, dtype=self.dtype)
        self.input_names = list(getattr(model, "input_names", ["data"]))
        self.output_names = list(getattr(model, "output_names", ["output"]))

    def version(self) -> str:
        return f"torch {self.torch.__version__}, {self.device.upper()}, {self.precision}"

    def run(self, feeds, outputs=None):
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device, self.dtype)
                    for n in self.input_names]
            out = self.module(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        values = {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs)}
        names = list(outputs or self.output_names)
        return {n: values[n] for n in names if n in values}
