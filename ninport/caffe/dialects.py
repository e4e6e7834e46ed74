"""Which Caffe fork a file was written for, told from the fork fields and layer types it uses.

protos/caffe.proto is a superset schema (upstream plus the known forks' fields), so fork files parse without
``--caffe-proto``. This module names the dialect(s), resolves fields two forks define differently by what the
file sets, and maps fork vocabulary onto upstream's (``pooling_param.ceil_mode`` becomes ``round_mode``).
The tables are the whole logic: add a row to recognise another fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from ninport.caffe import caffe_pb2
from ninport.errors import NetError


@dataclass(frozen=True)
class Dialect:
    """A fork family: the fields (``param.field`` or a LayerParameter field) and layer types that betray it."""

    name: str
    source: str  # the fork repository (and file) its schema comes from
    fields: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


# Evidence is matched on V2 type names and on fields set in a layer (a LayerParameter field, or
# ``<param>.<field>`` inside it). A field listed here should be one only that fork family writes.
DIALECTS: list[Dialect] = [
    Dialect("SSD", "weiliu89/caffe (branch ssd), src/caffe/proto/caffe.proto",
            fields=("prior_box_param", "detection_output_param", "norm_param", "permute_param"),
            types=("PriorBox", "DetectionOutput", "Normalize", "Permute")),
    Dialect("OpenCV SSD extensions", "opencv/opencv modules/dnn/src/caffe/opencv-caffe.proto",
            fields=("detection_output_param.clip", "detection_output_param.normalized_bbox",
                    "prior_box_param.width", "prior_box_param.height", "prior_box_param.offset_h",
                    "prior_box_param.offset_w")),
    Dialect("PSPNet/DeepLab", "hszhao/PSPNet and DeepLab v1/v2, src/caffe/proto/caffe.proto",
            fields=("interp_param", "bn_param.slope_filler", "bn_param.bias_filler", "bn_param.momentum",
                    "bn_param.frozen", "bn_param.eps", "bn_param.engine"),
            types=("Interp",)),
    Dialect("SegNet/ENet", "alexgkendall/caffe-segnet, TimoSaemann/caffe-enet, src/caffe/proto/caffe.proto",
            fields=("bn_param.bn_mode", "bn_param.scale_filler", "bn_param.shift_filler",
                    "upsample_param.upsample_h", "upsample_param.upsample_w", "upsample_param.pad_out_h",
                    "upsample_param.pad_out_w", "upsample_param.scale_h", "upsample_param.scale_w",
                    "dense_image_data_param", "dropout_param.sample_weights_test"),
            types=("DenseImageData",)),
    Dialect("R-CNN", "rbgirshick/caffe-fast-rcnn, daijifeng001/caffe-rfcn, src/caffe/proto/caffe.proto",
            fields=("roi_pooling_param", "psroi_pooling_param", "proposal_param", "dropout_param.scale_train"),
            types=("ROIPooling", "PSROIPooling", "Proposal")),
    Dialect("ShuffleNet/MobileNet", "farmingyard/ShuffleNet and MobileNet ports",
            fields=("shuffle_channel_param",),
            types=("ShuffleChannel", "ConvolutionDepthwise", "DepthwiseConvolution", "ReLU6", "Axpy")),
    Dialect("ceil_mode ports", "BVLC/caffe PR #3057 (DenseNet, ResNeXt, DPN ports; OpenCV's schema)",
            fields=("pooling_param.ceil_mode",)),
]


@dataclass(frozen=True)
class Clash:
    """A layer type two forks define differently: which dialect a layer follows, told by its fields, then by
    the other dialects of the file, then a default."""

    type: str
    param: str
    by_field: dict[str, str]  # field set in ``param`` -> dialect name
    by_file: tuple[str, ...]  # dialects that decide when the layer sets none of those fields
    default: str
    by_bottoms: dict[int, str] = field(default_factory=dict)  # number of bottoms -> dialect, before by_file


CLASHES: list[Clash] = [
    # BN: field 3 is bn_mode (SegNet/ENet) or momentum (PSPNet); the message here holds both by name.
    Clash("BN", "bn_param",
          {"bn_mode": "SegNet/ENet", "scale_filler": "SegNet/ENet", "shift_filler": "SegNet/ENet",
           "slope_filler": "PSPNet/DeepLab", "bias_filler": "PSPNet/DeepLab", "momentum": "PSPNet/DeepLab",
           "frozen": "PSPNet/DeepLab", "eps": "PSPNet/DeepLab", "engine": "PSPNet/DeepLab"},
          ("SegNet/ENet", "PSPNet/DeepLab"), "SegNet/ENet"),
    # Upsample: SegNet/ENet unpool with the pooling mask as a second bottom; YOLO ports repeat pixels by
    # ``scale`` from one bottom (and default scale to 1 where SegNet's default is 2).
    Clash("Upsample", "upsample_param",
          {"upsample_h": "SegNet/ENet", "upsample_w": "SegNet/ENet", "pad_out_h": "SegNet/ENet",
           "pad_out_w": "SegNet/ENet", "scale_h": "SegNet/ENet", "scale_w": "SegNet/ENet"},
          (), "YOLO ports", by_bottoms={2: "SegNet/ENet", 1: "YOLO ports"}),
]


@dataclass
class DialectReport:
    """What ``recognise`` found: dialect names in table order, the evidence for each, and per-layer choices
    for the clashing types (layer name -> dialect)."""

    names: list[str] = field(default_factory=list)
    evidence: dict[str, list[str]] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.names:
            return "upstream BVLC Caffe"
        return "; ".join(f"{n} ({', '.join(self.evidence[n][:3])}{', ...' if len(self.evidence[n]) > 3 else ''})"
                         for n in self.names)


def _set_fields(layer: Message) -> set[str]:
    """The fields a layer sets: LayerParameter fields and ``param.field`` one level inside them."""
    out: set[str] = set()
    for f, value in layer.ListFields():
        out.add(f.name)
        if f.name.endswith("_param") and f.message_type is not None and not f.is_repeated:
            out.update(f"{f.name}.{g.name}" for g, _ in value.ListFields())
    return out


def recognise(layers: list[tuple[str, str, Message]], rewritten: list[tuple[str, str]] = (),
              where: dict[str, str] | None = None) -> DialectReport:
    """Name the dialects of a net from its layers as ``(name, V2 type, LayerParameter-like message)``, and the
    fields ``(layer, param.field)`` that ``to_upstream_vocabulary`` already rewrote; ``where`` gives each
    layer's file:line for errors."""
    report = DialectReport()
    used: list[tuple[str, str, set[str]]] = [(name, kind, _set_fields(msg)) for name, kind, msg in layers]
    extra: dict[str, set[str]] = {}
    for layer, path in rewritten:
        extra.setdefault(layer, set()).add(path)
    used = [(name, kind, fields | extra.get(name, set())) for name, kind, fields in used]
    for dialect in DIALECTS:
        hits: list[str] = []
        for name, kind, fields in used:
            if kind in dialect.types:  # one line per layer: its type, else the fields that told
                hits.append(f"{name}: type {kind}")
            else:
                hits.extend(f"{name}: {f}" for f in dialect.fields if f in fields)
        if hits:
            report.names.append(dialect.name)
            report.evidence[dialect.name] = hits
    for clash in CLASHES:
        for (name, kind, fields), (_, _, msg) in zip(used, layers):
            if kind != clash.type:
                continue
            votes = {clash.by_field[f.split(".", 1)[1]] for f in fields
                     if f.startswith(clash.param + ".") and f.split(".", 1)[1] in clash.by_field}
            if len(votes) > 1:
                forks = " and ".join(sorted(votes))
                place = f"{where[name]}: " if where and name in where else ""
                raise NetError(f"{place}layer {name!r} ({kind}) mixes the {clash.param} fields of {forks}: no fork "
                               "defines them together")
            choice = (next(iter(votes), None) or clash.by_bottoms.get(len(getattr(msg, "bottom", ())))
                      or next((d for d in clash.by_file if d in report.names), clash.default))
            report.layers[name] = choice
            if choice not in report.names:
                report.names.append(choice)
                report.evidence[choice] = []
            report.evidence[choice].append(f"{name}: type {kind}")
    return report


# --------------------------------------------------------------------------------------------------------
# Mapping fork vocabulary onto upstream's


@dataclass(frozen=True)
class Refusal:
    """A fork field value no converter honours yet: refused in one line rather than converted wrongly."""

    type: str
    path: str  # param.field
    refused: object  # the value that changes the output
    why: str


# forklayers: remove a row once the converter honours it.
REFUSED: list[Refusal] = [
    Refusal("Dropout", "dropout_param.sample_weights_test", True,
            "Bayesian SegNet samples dropout masks at test time (Monte Carlo dropout), so its output is random; "
            "set it to false for the deterministic net"),
]


def _ceil_mode(param: caffe_pb2.PoolingParameter, where: str) -> str | None:
    if not param.HasField("ceil_mode"):
        return None
    if param.HasField("round_mode"):
        raise NetError(f"{where}: pooling_param sets both round_mode and a fork's ceil_mode; Caffe has one or the "
                       f"other")
    param.round_mode = caffe_pb2.PoolingParameter.CEIL if param.ceil_mode else caffe_pb2.PoolingParameter.FLOOR
    text = f"ceil_mode: {str(param.ceil_mode).lower()} read as round_mode: {'CEIL' if param.ceil_mode else 'FLOOR'}"
    param.ClearField("ceil_mode")
    return text


def to_upstream_vocabulary(net: caffe_pb2.NetParameter, source: str, lines: dict[tuple[str, int], int]
                           ) -> list[tuple[str, str, str, int | None]]:
    """Rewrite fork fields that have an upstream equivalent, in place, before the upgrade; returns
    ``(layer, param.field, note, line)`` for each rewrite. ``lines`` maps ("layer"/"layers", index) to the
    block's line."""
    notes: list[tuple[str, str, str, int | None]] = []
    for key in ("layer", "layers"):
        for i, layer in enumerate(getattr(net, key)):
            line = lines.get((key, i))
            where = f"{source}:{line}" if line else source
            name = layer.name or f"#{i}"
            if layer.HasField("pooling_param"):
                note = _ceil_mode(layer.pooling_param, f"{where}: layer {name!r}")
                if note:
                    notes.append((name, "pooling_param.ceil_mode", note, line))
    return notes


def check_refused(layers: list[tuple[str, str, Message, str]]) -> None:
    """Raise for the first layer ``(name, type, message, where)`` using a value listed in ``REFUSED``."""
    for name, kind, msg, where in layers:
        for r in REFUSED:
            if kind != r.type:
                continue
            param_name, field_name = r.path.split(".")
            param = getattr(msg, param_name)
            if msg.HasField(param_name) and param.HasField(field_name) and getattr(param, field_name) == r.refused:
                raise NetError(f"{where}: layer {name!r} ({kind}) sets {r.path}: {str(r.refused).lower()}: {r.why}")
