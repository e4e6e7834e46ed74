"""Score a converted model on a data set as Caffe would test it, and report it against the paper's rows.

The model is an ONNX file, a ninport ``.pt`` file, or a prototxt + caffemodel converted in memory; it runs in
onnxruntime. Images get Caffe's TEST transform (center crop to the model's input, mean, scale) or the
10-crop oversampling of Caffe's ``classifier.py`` (4 corners + center, each also mirrored; the ten softmax
outputs averaged). The report (Markdown, JSON and a PNG chart) puts the reproduced figure beside the paper's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ninport.errors import NinportError
from ninport.reproduce.datasets import GcnZca, Transform, normalize_name, open_dataset
from ninport.reproduce.tables import DEFAULT_TOLERANCE, Comparison, Row, compare, rows_for

CROPS = ("center", "10")
REPORT_NAME = "evaluation"


@dataclass
class LoadedModel:
    session: object  # a ninport.runtimes onnxruntime Runtime
    input_name: str
    input_shape: list  # N (int or a name), C, H, W
    output_name: str
    metadata: dict[str, str]
    description: str
    base_dir: str  # where relative mean files of the model are looked for


@dataclass
class Evaluation:
    """What one evaluation measured; percentages are of the ``count`` images scored."""

    model: str
    dataset: str
    split: str
    data: str
    count: int
    crops: str
    provider: str
    output: str
    top1: float  # accuracy %
    top5: float | None
    correct_top1: int
    correct_top5: int | None
    seconds: float
    preprocessing: dict
    comparison: Comparison | None = None
    paper_rows: list[Row] = field(default_factory=list)

    @property
    def error(self) -> float:
        return 100.0 - self.top1

    @property
    def top5_error(self) -> float | None:
        return None if self.top5 is None else 100.0 - self.top5

    def value_in(self, metric: str) -> float:
        """This run's figure in a table's metric (test error % for the paper's tables, top-1 % for the gist)."""
        if metric == "test error %":
            return self.error
        if metric == "top-1 accuracy %":
            return self.top1
        if metric == "top-5 accuracy %" and self.top5 is not None:
            return self.top5
        raise NinportError(f"no figure of this evaluation is in the metric {metric!r}")

    def as_dict(self) -> dict:
        return {
            "model": self.model, "dataset": self.dataset, "split": self.split, "data": self.data,
            "count": self.count, "crops": self.crops, "provider": self.provider, "output": self.output,
            "top1_accuracy": self.top1, "top5_accuracy": self.top5, "top1_error": self.error,
            "top5_error": self.top5_error, "correct_top1": self.correct_top1, "correct_top5": self.correct_top5,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.count / self.seconds, 2) if self.seconds > 0 else None,
            "preprocessing": self.preprocessing,
            "comparison": self.comparison.as_dict() if self.comparison else None,
            "paper_rows": [r.as_dict() for r in self.paper_rows],
        }


# --------------------------------------------------------------------------------------------------------
# The model


def load_model(paths: Sequence[str], provider: str = "auto") -> LoadedModel:
    """An onnxruntime session for an ``.onnx``/``.pt`` file or a prototxt + caffemodel pair."""
    from ninport import runtimes

    paths = [os.fspath(p) for p in paths]
    for p in paths:
        if not os.path.exists(p):
            raise NinportError(f"{p}: no such file")
    if len(paths) == 1 and paths[0].lower().endswith(".onnx"):
        from ninport.run import read_metadata

        session = runtimes.load("onnxruntime", paths[0], provider=provider)
        metadata = read_metadata(paths[0])
        description, base_dir = paths[0], os.path.dirname(os.path.abspath(paths[0]))
    elif len(paths) == 1 and paths[0].lower().endswith(".pt"):
        from ninport.torch.build import load_pt

        module = load_pt(paths[0])
        session, metadata = _session_from_module(module, provider)
        description, base_dir = paths[0], os.path.dirname(os.path.abspath(paths[0]))
    elif len(paths) == 2:
        from ninport.torch.build import load

        module = load(paths[0], paths[1])
        session, metadata = _session_from_module(module, provider)
        description = f"{paths[0]} + {paths[1]}"
        base_dir = os.path.dirname(os.path.abspath(paths[0]))
    else:
        raise NinportError("MODEL is one .onnx or .pt file, or a prototxt and a caffemodel; got "
                           + (" ".join(paths) or "nothing"))
    first = session.input_names[0]
    shape = session.input_shapes[first]
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise NinportError(f"{description}: input {first!r} has shape {shape}; evaluation needs N,C,H,W")
    return LoadedModel(session=session, input_name=first, input_shape=shape, output_name=session.output_names[0],
                       metadata=metadata, description=description, base_dir=base_dir)


def _session_from_module(module, provider: str):
    from ninport import runtimes
    from ninport.onnx.export import model_metadata, to_onnx_bytes

    return runtimes.load("onnxruntime", to_onnx_bytes(module), provider=provider), model_metadata(module)


# --------------------------------------------------------------------------------------------------------
# Preprocessing


def _declared(metadata: dict[str, str], key: str):
    raw = metadata.get(f"preprocess_{key}")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # strings (mean_file) are stored as they are


def make_transform(model: LoadedModel, image_shape: Sequence[int], mean_file: str | None = None,
                   mean_values: Sequence[float] | None = None, scale: float | None = None) -> tuple[Transform, dict]:
    """Caffe's TEST transform for this model on images of ``image_shape``: explicit options, then what the
    model's data layer declared (kept in the ONNX metadata)."""
    from ninport.caffe.caffemodel import read_binaryproto

    channels, height, width = (int(d) for d in model.input_shape[1:4])
    c, h, w = (int(d) for d in image_shape)
    if c != channels:
        raise NinportError(f"{model.description} takes {channels}-channel input; the data has {c} channels")
    if h < height or w < width:
        raise NinportError(f"{model.description} takes {height}×{width} input; the images are only {h}×{w}")
    crop = 0 if (h, w) == (height, width) else height
    if crop and height != width:
        raise NinportError(f"Caffe's crop_size is square; cannot crop {h}×{w} images to a {height}×{width} input")
    described = {"crop_size": crop, "image_size": [c, h, w], "input_size": [channels, height, width]}
    mean = None
    if mean_file and mean_values:
        raise NinportError("give a mean file or mean values, not both")
    if mean_file:
        mean, described["mean_file"] = _mean_image(read_binaryproto(mean_file)), mean_file
    elif mean_values:
        mean, described["mean_value"] = np.asarray(mean_values, np.float32), [float(v) for v in mean_values]
    elif _declared(model.metadata, "mean_value") is not None:
        values = _declared(model.metadata, "mean_value")
        mean, described["mean_value"] = np.asarray(values, np.float32), values
    elif _declared(model.metadata, "mean_file") is not None:
        declared = str(_declared(model.metadata, "mean_file"))
        found = next((p for p in (declared, os.path.join(model.base_dir, declared)) if os.path.exists(p)), None)
        if found is None:
            raise NinportError(f"the model's data layer subtracts mean file {declared!r}, which is not here; "
                               "pass --mean-file (a .binaryproto) or --mean-values B,G,R")
        mean, described["mean_file"] = _mean_image(read_binaryproto(found)), found
    if scale is None:
        declared_scale = _declared(model.metadata, "scale")
        scale = float(declared_scale) if declared_scale is not None else 1.0
    described["scale"] = scale
    return Transform(crop_size=crop, mean=mean, scale=scale, phase="TEST"), described


def _mean_image(blob: np.ndarray) -> np.ndarray:
    return blob.reshape(blob.shape[-3:]) if blob.ndim >= 3 else blob.reshape(1, *blob.shape[-2:])


def crop_offsets(height: int, width: int, crop: int, crops: str) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of each crop: Caffe's TEST center crop, or classifier.py's oversampling order
    (top-left, top-right, bottom-left, bottom-right, center, then the same five mirrored)."""
    if not crop:
        return [(0, 0, False)] if crops == "center" else [(0, 0, False), (0, 0, True)]
    center = ((height - crop) // 2, (width - crop) // 2)
    if crops == "center":
        return [(*center, False)]
    five = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), center]
    return [(t, left, False) for t, left in five] + [(t, left, True) for t, left in five]


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """The output itself when it already is a distribution (a Softmax top), its softmax otherwise."""
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3):
        return scores
    return softmax(scores)


# --------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    model_paths: Sequence[str],
    dataset: str,
    data: str | None = None,
    split: str = "test",
    crops: str = "center",
    batch_size: int = 50,
    provider: str = "auto",
    compare_method: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    mean_file: str | None = None,
    mean_values: Sequence[float] | None = None,
    scale: float | None = None,
    preprocess: str | None = None,
    limit: int | None = None,
    label: str = "fine",
    progress: bool = False,
) -> Evaluation:
    """Top-1/top-5 of a model on one split of a data set, optionally compared with a paper row."""
    if crops not in CROPS:
        raise NinportError(f"--crops must be center or 10, got {crops!r}")
    if batch_size < 1:
        raise NinportError(f"--batch-size must be positive, got {batch_size}")
    if limit is not None and limit < 1:
        raise NinportError(f"--limit must be positive, got {limit}")
    name = normalize_name(dataset)
    paper_rows = rows_for(name) if name != "digits" else []
    comparison_row = None
    if compare_method:
        if not paper_rows:
            raise NinportError(f"the paper has no table for {name}; --compare needs one of "
                               "cifar10, cifar100, svhn, mnist, imagenet")
        comparison_row = compare(name, compare_method, 0.0, tolerance).row  # fails early on a bad method

    model = load_model(model_paths, provider=provider)
    ds = open_dataset(name, data, split, label=label)
    transform, described = make_transform(model, ds.image_shape, mean_file, mean_values, scale)
    described["channel_order"] = ds.channel_order
    described["notes"] = list(ds.notes)
    whitening = None
    if preprocess and preprocess.lower() not in ("none", ""):
        if preprocess.replace("-", "_").replace("+", "_").lower() != "gcn_zca":
            raise NinportError(f"unknown --preprocess {preprocess!r}; use gcn_zca or none")
        if ds.array is None:
            raise NinportError("GCN + ZCA needs a data set held in memory (CIFAR, SVHN, MNIST, digits)")
        train = ds if ds.split == "train" else open_dataset(name, data, "train", label=label)
        whitening = GcnZca().fit(train.images())
        described["gcn_zca"] = {"gcn_scale": whitening.gcn_scale, "zca_bias": whitening.bias,
                                "fitted_on": f"{name} train ({len(train)} images)"}

    total = len(ds) if limit is None else min(limit, len(ds))
    static_batch = model.input_shape[0] if isinstance(model.input_shape[0], int) else None
    _c, height, width = ds.image_shape
    offsets = crop_offsets(height, width, transform.crop_size, crops)
    if crops == "10" and not transform.crop_size:
        described["notes"].append("images already have the input size: '10 crops' are the image and its mirror")
    classes = None
    correct1 = correct5 = 0
    start = time.perf_counter()
    iterator = ds.batches(batch_size, limit=total)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", file=sys.stderr, desc=f"{name} {split}")
    for images, labels in iterator:
        if whitening is not None:
            images = whitening.apply(images)
        probs = None
        for top, left, flip in offsets:
            batch = transform.crop(images, top, left, flip)
            scores = _run(model, batch, static_batch)
            if classes is None:
                classes = scores.shape[1]
                if int(ds.labels[:total].max(initial=0)) >= classes:
                    raise NinportError(f"{model.description} outputs {classes} scores per image, but the "
                                       f"{name} labels go up to {int(ds.labels[:total].max())}")
            p = _as_probabilities(scores) if len(offsets) > 1 else scores
            probs = p if probs is None else probs + p
        assert probs is not None
        order = np.argsort(-probs, axis=1, kind="stable")
        correct1 += int(np.sum(order[:, 0] == labels))
        if classes is not None and classes >= 5:
            correct5 += int(np.sum(np.any(order[:, :5] == labels[:, None], axis=1)))
        if bar is not None:
            bar.update(len(labels))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    has_top5 = classes is not None and classes >= 5
    result = Evaluation(
        model=model.description, dataset=name, split=ds.split, data=ds.source, count=total,
        crops=crops, provider=model.session.provider, output=model.output_name,
        top1=100.0 * correct1 / total, top5=100.0 * correct5 / total if has_top5 else None,
        correct_top1=correct1, correct_top5=correct5 if has_top5 else None, seconds=seconds,
        preprocessing=described, paper_rows=paper_rows,
    )
    if comparison_row is not None:
        result.comparison = Comparison(row=comparison_row, reproduced=round(result.value_in(comparison_row.metric), 6),
                                       tolerance=float(tolerance))
    return result


def _run(model: LoadedModel, batch: np.ndarray, static_batch: int | None) -> np.ndarray:
    """Scores N×classes for one batch; a model with a fixed batch gets zero-padded chunks."""
    if static_batch is None:
        out = model.session.run({model.input_name: batch}, [model.output_name])[model.output_name]
        return out.reshape(out.shape[0], -1)
    pieces = []
    for i in range(0, batch.shape[0], static_batch):
        chunk = batch[i : i + static_batch]
        count = chunk.shape[0]
        if count < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - count, *chunk.shape[1:]), np.float32)])
        out = model.session.run({model.input_name: chunk}, [model.output_name])[model.output_name]
        pieces.append(out.reshape(out.shape[0], -1)[:count])
    return np.concatenate(pieces)


# --------------------------------------------------------------------------------------------------------
# The report


def write_report(result: Evaluation, output_dir: str | os.PathLike) -> dict[str, str]:
    """``evaluation.md``, ``evaluation.json`` and ``evaluation.png`` in ``output_dir``, each whole or absent."""
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    paths = {kind: os.path.join(output_dir, f"{REPORT_NAME}.{kind}") for kind in ("md", "json", "png")}
    payload = result.as_dict()
    payload["report"] = {k: os.path.basename(v) for k, v in paths.items()}
    _atomic_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    _atomic_text(paths["md"], format_markdown(result, os.path.basename(paths["png"])))
    tmp = paths["png"] + ".tmp.png"
    try:
        plot_chart(result, tmp)
        os.replace(tmp, paths["png"])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return paths


def _atomic_text(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ninport-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _chart_metric(result: Evaluation) -> str:
    if result.comparison is not None:
        return result.comparison.row.metric
    if result.paper_rows:
        return result.paper_rows[0].metric
    return "test error %"


def format_markdown(result: Evaluation, chart_name: str) -> str:
    pre = result.preprocessing
    size = "×".join(map(str, pre.get("image_size", [])))
    crops = "center crop" if result.crops == "center" else "10 crops (4 corners + center, mirrored), softmax averaged"
    lines = [
        f"# Evaluation: {result.dataset} ({result.split})",
        "",
        f"- model: `{result.model}` (output `{result.output}`, onnxruntime on {result.provider})",
        f"- data: `{result.data}`, {result.count} images, channel order {pre.get('channel_order')}",
        f"- crops: {crops} of {pre.get('crop_size') or 'the full'} from {size}",
        f"- preprocessing: {_describe_pre(pre)}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {result.top1:.2f} % ({result.correct_top1} / {result.count}) |",
        f"| top-1 error | {result.error:.2f} % |",
    ]
    if result.top5 is not None:
        lines += [f"| top-5 accuracy | {result.top5:.2f} % ({result.correct_top5} / {result.count}) |",
                  f"| top-5 error | {result.top5_error:.2f} % |"]
    lines.append(f"| time | {result.seconds:.2f} s |")
    if result.comparison is not None:
        c = result.comparison
        lines += ["", "## Against the paper", "", c.describe(), "", f"Source: {c.row.source}."]
    if result.paper_rows:
        metric = _chart_metric(result)
        ours = result.value_in(metric)
        lines += ["", f"## The paper's rows for {result.dataset} ({metric})", "",
                  "| table | method | paper | this run - paper |", "|---|---|---|---|"]
        for r in result.paper_rows:
            if r.metric != metric:
                continue
            mark = " **(compared)**" if result.comparison and r == result.comparison.row else ""
            lines.append(f"| {r.table} | {r.method}{mark} | {r.value:.2f} | {ours - r.value:+.2f} |")
        lines.append(f"| - | this run (ninport) | {ours:.2f} | |")
    else:
        lines += ["", f"The paper has no table for {result.dataset}."]
    lines += ["", f"![reproduced vs paper]({chart_name})", ""]
    return "\n".join(lines)


def _describe_pre(pre: dict) -> str:
    parts = []
    if "gcn_zca" in pre:
        parts.append(f"GCN (scale {pre['gcn_zca']['gcn_scale']:g}) + ZCA (bias {pre['gcn_zca']['zca_bias']:g}), "
                     f"fitted on {pre['gcn_zca']['fitted_on']}")
    if "mean_file" in pre:
        parts.append(f"mean file `{pre['mean_file']}` subtracted")
    elif "mean_value" in pre:
        parts.append(f"mean values {pre['mean_value']} subtracted")
    else:
        parts.append("no mean subtracted")
    parts.append(f"scale {pre.get('scale', 1.0):g}")
    parts += pre.get("notes", [])
    return "; ".join(parts)


def plot_chart(result: Evaluation, path: str) -> None:
    """Horizontal bars: the paper's rows for the data set and this run, in the compared row's metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = _chart_metric(result)
    rows = [r for r in result.paper_rows if r.metric == metric]
    labels = [f"{r.method} ({r.table})" if r.table.startswith("Table") else r.method for r in rows]
    labels.append("this run (ninport)")
    values = [r.value for r in rows] + [result.value_in(metric)]
    colors = []
    for r in rows:
        if result.comparison is not None and r == result.comparison.row:
            colors.append("#d62728")
        elif r.method.upper().startswith("NIN"):
            colors.append("#ff9896")
        else:
            colors.append("#9e9e9e")
    colors.append("#1f77b4")
    height = max(2.4, 0.42 * len(labels) + 1.3)
    fig, ax = plt.subplots(figsize=(9, height), dpi=110)
    try:
        positions = np.arange(len(labels))[::-1]
        ax.barh(positions, values, color=colors)
        ax.set_yticks(positions)
        ax.set_yticklabels(labels, fontsize=9)
        top = max(values) if values else 1.0
        for y, v in zip(positions, values):
            ax.text(v + top * 0.01, y, f"{v:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.15 if top > 0 else 1.0)
        ax.set_xlabel(metric)
        title = f"{result.dataset} {result.split}: this run vs the paper" if rows else \
            f"{result.dataset} {result.split}: this run (the paper has no table for it)"
        if result.comparison is not None:
            c = result.comparison
            title += f"\ncompared with '{c.row.method}': delta {c.delta:+.2f}, {c.verdict}"
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        from matplotlib.patches import Patch

        used = set(colors)
        legend = [Patch(color=color, label=text) for color, text in (
            ("#1f77b4", "this run"), ("#d62728", "compared row"), ("#ff9896", "NIN (paper)"),
            ("#9e9e9e", "other methods (paper)")) if color in used]
        if rows:  # a row of its own under the axes, so it hides no bar, value or axis label
            fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
            fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
        else:
            fig.tight_layout()
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
