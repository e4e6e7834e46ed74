"""``ninport run``: an ONNX model on images or tensors, with Caffe's test-time preprocessing.

Images get what Caffe's ``DataTransformer`` does to a test batch built the usual ImageNet way: resized to
256×256, center-cropped to the model's input, channels in BGR order, values 0–255, the mean (file or values)
subtracted, then scaled. ``.npy`` files are fed as they are. Defaults come from the ONNX file's metadata.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ninport.errors import NinportError, ParseError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
RESIZE_TO = 256


@dataclass
class Preprocess:
    """Caffe's test-time transform for one input: crop size, mean (array or per-channel), scale."""

    height: int
    width: int
    channels: int = 3
    mean: np.ndarray | None = None  # C×H×W mean image or C values
    scale: float = 1.0
    resize: int = RESIZE_TO

    def image(self, path: str) -> np.ndarray:
        """One image file → C×H×W float32, as Caffe's transformer would feed it."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                size = max(self.resize, self.height, self.width)
                img = img.resize((size, size), Image.BILINEAR)
                array = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise ParseError(f"{path}: cannot read the image ({exc})") from None
        if array.ndim == 2:
            array = array[:, :, None]
        else:
            array = array[:, :, ::-1]  # RGB → BGR, Caffe's channel order
        array = array.transpose(2, 0, 1)  # HWC → CHW
        top = (array.shape[1] - self.height) // 2
        left = (array.shape[2] - self.width) // 2
        array = array[:, top : top + self.height, left : left + self.width]
        if self.mean is not None:
            mean = self.mean
            if mean.ndim == 3:
                # A mean image is subtracted at the same crop offsets (data_transformer.cpp).
                mt = (mean.shape[1] - self.height) // 2
                ml = (mean.shape[2] - self.width) // 2
                mean = mean[:, mt : mt + self.height, ml : ml + self.width]
            else:
                mean = mean.reshape(-1, 1, 1)
            array = array - mean
        return np.ascontiguousarray(array * self.scale, dtype=np.float32)


def read_metadata(model_path: str) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception as exc:
        raise ParseError(f"{model_path}: not an ONNX file ({exc})") from None
    return {p.key: p.value for p in model.metadata_props}


def make_preprocess(
    input_shape: Sequence,
    metadata: dict[str, str],
    mean_file: str | None = None,
    mean_values: Sequence[float] | None = None,
    scale: float | None = None,
    warn=lambda msg: print(msg, file=sys.stderr),
) -> Preprocess:
    """The transform for a model input: explicit options first, then the ONNX metadata ninport wrote."""
    from ninport.caffe.caffemodel import read_binaryproto

    channels, height, width = (int(d) for d in input_shape[1:4])
    mean = None
    if mean_file:
        mean = read_binaryproto(mean_file).reshape(-1, *read_binaryproto(mean_file).shape[-2:])
    elif mean_values:
        mean = np.asarray(mean_values, dtype=np.float32)
    elif "preprocess_mean_value" in metadata:
        mean = np.asarray(json.loads(metadata["preprocess_mean_value"]), dtype=np.float32)
    elif "preprocess_mean_file" in metadata:
        declared = metadata["preprocess_mean_file"]
        if os.path.exists(declared):
            mean = read_binaryproto(declared).reshape(-1, *read_binaryproto(declared).shape[-2:])
        else:
            warn(f"warning: the model declares mean file {declared!r}, which is not here; "
                 "no mean is subtracted (pass --mean-file or --mean-values B,G,R)")
    if mean is not None and mean.ndim == 1 and mean.size not in (1, channels):
        raise NinportError(f"{mean.size} mean values for a {channels}-channel input")
    if scale is None:
        scale = float(json.loads(metadata["preprocess_scale"])) if "preprocess_scale" in metadata else 1.0
    return Preprocess(height=height, width=width, channels=channels, mean=mean, scale=scale)


def load_input(path: str, pre: Preprocess) -> np.ndarray:
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file")
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ParseError(f"{path}: not a .npy array ({exc})") from None
        return array.astype(np.float32, copy=False)
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return pre.image(path)[None]
    raise ParseError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or .npy tensor")


def batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def read_labels(path: str | None) -> list[str] | None:
    if path is None:
        return None
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def softmax_if_scores(scores: np.ndarray) -> np.ndarray:
    """Probabilities: the output itself when it already is a distribution (a Softmax top), else its softmax."""
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3):
        return scores
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def run_model(
    model_path: str,
    inputs: Sequence[str],
    top_k: int = 5,
    labels: str | None = None,
    mean_file: str | None = None,
    mean_values: Sequence[float] | None = None,
    scale: float | None = None,
    batch_size: int = 16,
    provider: str = "auto",
    progress: bool = False,
    warn=lambda msg: print(msg, file=sys.stderr),
) -> dict:
    """Classify ``inputs`` with an ONNX model; returns the provider used and the top-k of each input."""
    from ninport import runtimes

    if not inputs:
        raise NinportError("no inputs given")
    if batch_size < 1 or top_k < 1:
        raise NinportError("--batch-size and --top-k must be positive")
    label_names = read_labels(labels)
    session = runtimes.load("onnxruntime", model_path, provider=provider, warn=warn)
    metadata = read_metadata(model_path)
    first = session.input_names[0]
    shape = session.input_shapes[first]
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise NinportError(f"{model_path}: input {first!r} has shape {shape}; ninport run needs N,C,H,W")
    pre = make_preprocess(shape, metadata, mean_file, mean_values, scale, warn=warn)
    static_batch = shape[0] if isinstance(shape[0], int) else None
    results = []
    iterator = list(batches(list(inputs), static_batch or batch_size))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, unit="batch", file=sys.stderr)
    output_name = session.output_names[0]
    for chunk in iterator:
        arrays = [load_input(p, pre) for p in chunk]
        for p, a in zip(chunk, arrays):
            if a.ndim != 4 or list(a.shape[1:]) != shape[1:]:
                raise NinportError(f"{p}: tensor of shape {list(a.shape)}, the model takes N×{shape[1:]}")
        data = np.concatenate(arrays, axis=0)
        count = data.shape[0]
        if static_batch and count < static_batch:
            data = np.concatenate([data, np.zeros((static_batch - count, *shape[1:]), np.float32)])
        scores = session.run({first: data}, [output_name])[output_name]
        scores = scores.reshape(scores.shape[0], -1)[:count]
        probs = softmax_if_scores(scores)
        row = 0
        for p, a in zip(chunk, arrays):
            for item in range(a.shape[0]):
                order = np.argsort(-scores[row])[:top_k]
                results.append({
                    "input": p if a.shape[0] == 1 else f"{p}[{item}]",
                    "top_k": [{
                        "class": int(c),
                        "label": label_names[c] if label_names and c < len(label_names) else None,
                        "score": float(scores[row, c]),
                        "prob": float(probs[row, c]),
                    } for c in order],
                })
                row += 1
    return {"model": model_path, "provider": session.provider, "output": output_name, "results": results}
