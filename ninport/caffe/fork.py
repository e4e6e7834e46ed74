"""Files of a Caffe fork, read with the fork's own schema (``--caffe-proto PATH``).

The fork's ``caffe.proto`` is compiled at run time with grpc_tools' protoc into a descriptor set (no generated
code is imported, so any protobuf runtime works); the fork's ``NetParameter`` parses the prototxt or
caffemodel, and the message is translated to upstream Caffe's schema by serializing it and parsing the bytes
as upstream's ``NetParameter``. Before that is trusted, every field set in the file is compared with upstream:

- a field whose number means something else upstream (another name or type) is translated when its meaning
  is known (a fork's ``bool ceil_mode`` in PoolingParameter becomes ``round_mode`` CEIL/FLOOR) and is an error
  otherwise, as the bytes would land in the wrong field;
- a field upstream has under another number, or an enum value under another number, is moved by name;
- a field (or enum value) only the fork has is kept as an unknown field, where a plugin can read it
  (``fork_param``); in a layer of a type ninport converts it is an error naming layer, field and line, unless
  it only matters for training (fillers, learning rates, phase rules).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ninport.caffe import caffe_pb2
from ninport.caffe.prototxt import LayerBlock, parse_text, read_text, scan_layer_blocks
from ninport.errors import NetError, ParseError, RuntimeUnavailableError

# Fork-only fields inside these messages, or under these LayerParameter fields, only matter for training.
HARMLESS_MESSAGES = {"FillerParameter", "ParamSpec", "NetStateRule", "LossParameter"}
HARMLESS_LAYER_FIELDS = {"param", "include", "exclude", "loss_weight", "propagate_down", "loss_param"}
_INT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
              FieldDescriptor.TYPE_UINT64}


@dataclass
class ForkField:
    """One field of the fork's file that upstream Caffe would read differently, and what was done with it."""

    path: str  # e.g. "pooling_param.ceil_mode"
    kind: str  # "translated", "fork-only", "fork-only enum value", "conflict"
    detail: str
    layer: str | None = None
    layer_type: str | None = None
    line: int | None = None
    harmless: bool = False
    block: tuple[str, int] | None = None  # ("layer" or "layers", index in the file)

    def where(self, source: str) -> str:
        return f"{source}:{self.line}" if self.line else source

    def describe(self, source: str) -> str:
        who = f"layer {self.layer!r} ({self.layer_type}) " if self.layer else "the net's "
        return f"{self.where(source)}: {who}field {self.path}: {self.detail}"


@dataclass
class ForkSchema:
    """A compiled fork schema: its descriptor pool and message classes by full name."""

    path: str
    pool: descriptor_pool.DescriptorPool
    package: str
    classes: dict[str, type] = field(default_factory=dict)

    def message_class(self, name: str) -> type:
        """The fork's class for message ``name`` (e.g. "NetParameter"), relative to the fork's package."""
        full = f"{self.package}.{name}" if self.package else name
        if full not in self.classes:
            try:
                self.classes[full] = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full))
            except KeyError:
                raise ParseError(f"{self.path}: the fork's schema has no message {full!r}") from None
        return self.classes[full]


_SCHEMAS: dict[tuple[str, float, int], ForkSchema] = {}


def compile_schema(path: str | os.PathLike) -> ForkSchema:
    """Compile a fork's caffe.proto with grpc_tools' protoc (once per file version) and load it."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ParseError(f"{path}: no such file (--caffe-proto needs the fork's caffe.proto)")
    stat = os.stat(path)
    key = (path, stat.st_mtime, stat.st_size)
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    try:
        from grpc_tools import protoc
    except ImportError:
        raise RuntimeUnavailableError(
            "--caffe-proto compiles the fork's schema with grpcio-tools, which is not installed: "
            "pip install 'ninport[fork]'"
        ) from None
    include = os.path.join(os.path.dirname(os.path.abspath(protoc.__file__)), "_proto")
    with tempfile.TemporaryDirectory(prefix="ninport-fork-") as tmp:
        out = os.path.join(tmp, "fork.pb")
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(path)}", f"-I{include}",
               f"--descriptor_set_out={out}", "--include_imports", path]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
            what = lines[0] if lines else f"protoc exited with status {done.returncode}"
            raise ParseError(f"{path}: protoc cannot compile the fork's schema: {what}")
        with open(out, "rb") as f:
            data = f.read()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    main = next(p for p in files.file if os.path.basename(p.name) == os.path.basename(path))
    names = [m.name for m in main.message_type]
    if "NetParameter" not in names:
        raise ParseError(f"{path}: not a Caffe schema (it defines no NetParameter message)")
    schema = ForkSchema(path=path, pool=pool, package=main.package)
    _SCHEMAS[key] = schema
    return schema


# --------------------------------------------------------------------------------------------------------
# Translation to upstream


def _relative(descriptor, package: str) -> str:
    name = descriptor.full_name
    return name[len(package) + 1 :] if package and name.startswith(package + ".") else name


def _upstream_descriptor(fork: Descriptor, package: str) -> Descriptor | None:
    try:
        return caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName("caffe." + _relative(fork, package))
    except KeyError:
        return None


def _compatible(f: FieldDescriptor, u: FieldDescriptor, package: str) -> bool:
    if f.is_repeated and not u.is_repeated:
        return False  # upstream would keep only the last value
    if f.type != u.type and not (f.type in _INT_TYPES and u.type in _INT_TYPES):
        return False
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return _relative(f.message_type, package) == _relative(u.message_type, "caffe")
    if f.type == FieldDescriptor.TYPE_ENUM:
        return _relative(f.enum_type, package) == _relative(u.enum_type, "caffe")
    return True


@dataclass
class _Context:
    package: str
    findings: list[ForkField]
    layer: str | None = None
    layer_type: str | None = None
    harmless: bool = False

    def add(self, path: list[str], kind: str, detail: str, harmless: bool = False) -> None:
        self.findings.append(ForkField(".".join(path), kind, detail, self.layer, self.layer_type,
                                       harmless=self.harmless or harmless))


def _copy_by_name(fm: Message, f: FieldDescriptor, um: Message, u: FieldDescriptor, path: list[str],
                  ctx: _Context) -> None:
    """Set upstream field ``u`` from the fork's field ``f`` (same name, another number)."""
    value = getattr(fm, f.name)
    if f.type == FieldDescriptor.TYPE_MESSAGE and not u.is_repeated:
        um.ClearField(u.name)  # before taking the field: a cleared sub-message is detached from its parent
    target = getattr(um, u.name)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        items = list(value) if f.is_repeated else [value]
        for i, item in enumerate(items):
            sub = target.add() if u.is_repeated else target
            sub.ParseFromString(item.SerializeToString())
            _walk(item, sub, path + ([f"{f.name}[{i}]"] if f.is_repeated else [f.name]), ctx)
    elif f.type == FieldDescriptor.TYPE_ENUM:
        names = [f.enum_type.values_by_number[v].name for v in (value if f.is_repeated else [value])]
        numbers = [u.enum_type.values_by_name[n].number for n in names if n in u.enum_type.values_by_name]
        if u.is_repeated:
            del target[:]
            target.extend(numbers)
        elif numbers:
            setattr(um, u.name, numbers[-1])
    elif u.is_repeated:
        del target[:]
        target.extend(value if f.is_repeated else [value])
    else:
        setattr(um, u.name, value)


def _ceil_mode(fm: Message, um: Message, path: list[str], ctx: _Context) -> set[str]:
    """A fork's ``bool ceil_mode`` (in several forks, at number 13, where upstream has ``round_mode``)."""
    f = fm.DESCRIPTOR.fields_by_name.get("ceil_mode")
    if f is None or f.type != FieldDescriptor.TYPE_BOOL or "round_mode" in fm.DESCRIPTOR.fields_by_name:
        return set()
    ceil = bool(fm.ceil_mode)
    clash = um.DESCRIPTOR.fields_by_number.get(f.number)
    if clash is not None and clash.name != "round_mode":
        um.ClearField(clash.name)
    # The fork's default may be either; upstream's is CEIL, so a FLOOR default must be written out.
    if fm.HasField("ceil_mode") or not ceil:
        um.round_mode = caffe_pb2.PoolingParameter.CEIL if ceil else caffe_pb2.PoolingParameter.FLOOR
        mode = "CEIL" if ceil else "FLOOR"
        given = f"ceil_mode: {str(ceil).lower()}" + ("" if fm.HasField("ceil_mode") else " (the fork's default)")
        ctx.add(path + ["ceil_mode"], "translated", f"{given} read as round_mode: {mode}")
    elif clash is not None:
        um.ClearField("round_mode")
    return {"ceil_mode"}


HOOKS: dict[str, Callable[[Message, Message, list[str], _Context], set[str]]] = {"PoolingParameter": _ceil_mode}


def _walk(fm: Message, um: Message, path: list[str], ctx: _Context, skip: set[str] | None = None) -> None:
    """Compare the fields set in fork message ``fm`` with upstream message ``um`` parsed from its bytes; fix
    ``um`` where the numbers disagree and record every difference in ``ctx``."""
    package = ctx.package
    fd, ud = fm.DESCRIPTOR, um.DESCRIPTOR
    saved = ctx.harmless
    if _relative(fd, package) in HARMLESS_MESSAGES:
        ctx.harmless = True
    hook = HOOKS.get(_relative(fd, package))
    handled = hook(fm, um, path, ctx) if hook else set()
    moves: list[tuple[FieldDescriptor, FieldDescriptor]] = []
    for f, value in fm.ListFields():
        if f.name in handled or f.is_extension or (skip and f.name in skip):
            continue
        here = path + [f.name]
        top_harmless = not path and ctx.layer is not None and f.name in HARMLESS_LAYER_FIELDS
        u = ud.fields_by_number.get(f.number)
        if u is not None and u.name == f.name and _compatible(f, u, package):
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                saved_inner = ctx.harmless
                ctx.harmless = ctx.harmless or top_harmless
                if f.is_repeated:
                    for i, (fi, ui) in enumerate(zip(value, getattr(um, f.name))):
                        _walk(fi, ui, path + [f"{f.name}[{i}]"], ctx)
                else:
                    _walk(value, getattr(um, f.name), here, ctx)
                ctx.harmless = saved_inner
            elif f.type == FieldDescriptor.TYPE_ENUM:
                _check_enum(fm, f, um, u, here, ctx, top_harmless)
            continue
        if u is not None and u.name not in handled:
            um.ClearField(u.name)  # the reparse put the fork's bytes into an unrelated upstream field
        by_name = ud.fields_by_name.get(f.name)
        if by_name is not None and _compatible(f, by_name, package):
            moves.append((f, by_name))
        elif u is None and by_name is None:
            ctx.add(here, "fork-only", f"not in upstream Caffe's {ud.name} (field number {f.number})", top_harmless)
        else:
            other = u if u is not None else by_name
            ctx.add(here, "conflict", f"the fork's {_type_name(f)} field number {f.number} clashes with upstream's "
                    f"{_type_name(other)} {other.name} = {other.number}", top_harmless)
    for f, u in moves:
        _copy_by_name(fm, f, um, u, path, ctx)
        ctx.add(path + [f.name], "translated", f"number {f.number} in the fork, {u.number} upstream")
    ctx.harmless = saved


def _check_enum(fm: Message, f: FieldDescriptor, um: Message, u: FieldDescriptor, path: list[str], ctx: _Context,
                harmless: bool) -> None:
    values = list(getattr(fm, f.name)) if f.is_repeated else [getattr(fm, f.name)]
    out: list[int] = []
    for v in values:
        name = f.enum_type.values_by_number[v].name if v in f.enum_type.values_by_number else str(v)
        up = u.enum_type.values_by_number.get(v)
        if up is not None and up.name == name:
            out.append(v)
        elif name in u.enum_type.values_by_name:
            out.append(u.enum_type.values_by_name[name].number)
            ctx.add(path, "translated", f"enum value {name} is {v} in the fork, "
                    f"{u.enum_type.values_by_name[name].number} upstream")
        else:
            ctx.add(path, "fork-only enum value", f"{name} = {v} is not a value of upstream's {u.enum_type.name}",
                    harmless)
    if f.is_repeated:
        del getattr(um, u.name)[:]
        getattr(um, u.name).extend(out)
    elif out:
        setattr(um, u.name, out[0])
    else:
        um.ClearField(u.name)


def _type_name(f: FieldDescriptor) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return f.message_type.name
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.name
    names = {v: k[5:].lower() for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    return names.get(f.type, str(f.type))


def _layer_type(layer: Message, v1: bool) -> str:
    if not v1:
        return layer.type
    from ninport.caffe.upgrade import V1_TO_V2_TYPE

    enum = layer.DESCRIPTOR.fields_by_name["type"].enum_type
    name = enum.values_by_number[layer.type].name if layer.type in enum.values_by_number else str(layer.type)
    return V1_TO_V2_TYPE.get(name, name)


def translate(fork_net: Message, package: str) -> tuple[caffe_pb2.NetParameter, list[ForkField]]:
    """Upstream's NetParameter for a fork's, and the differences found (each layer finding knows its
    layer's block: ``("layer" or "layers", index)``)."""
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(fork_net.SerializeToString())
    except DecodeError as exc:  # a wire-type clash upstream cannot even decode
        raise ParseError(f"the fork's net does not decode as upstream Caffe's ({exc})") from None
    findings: list[ForkField] = []
    ctx = _Context(package, findings)
    for key in ("layer", "layers"):
        for i, (fl, ul) in enumerate(zip(getattr(fork_net, key), getattr(net, key))):
            before = len(findings)
            ctx.layer = fl.name or (fl.layer.name if key == "layers" and fl.HasField("layer") else f"#{i}")
            ctx.layer_type = _layer_type(fl, key == "layers")
            _walk(fl, ul, [], ctx)
            for f in findings[before:]:
                f.block = (key, i)
    ctx.layer = ctx.layer_type = None
    _walk(fork_net, net, [], ctx, skip={"layer", "layers"})
    return net, findings


def _builtin_types() -> set[str]:
    from ninport.caffe import shapes

    return {t for t, fn in shapes.RULES.items() if (getattr(fn, "__module__", "") or "").startswith("ninport.caffe.")}


def check_findings(findings: list[ForkField], source: str) -> None:
    """Raise one error listing every fork field that would change a layer ninport converts."""
    builtin = _builtin_types()
    bad = [f for f in findings if f.kind != "translated" and f.layer is not None and not f.harmless
           and (f.layer_type in builtin or (f.path == "type" and f.kind == "fork-only enum value"))]
    if bad:
        listing = "; ".join(f.describe(source) for f in bad)
        raise NetError(f"fields of the Caffe fork that ninport cannot honour (they change layers it converts): "
                       f"{listing}")


# --------------------------------------------------------------------------------------------------------
# Readers


def _field_line(lines: list[str], start: int, end: int, path: str) -> int:
    """The line of a field in a layer block (first line from ``start`` naming its last path element)."""
    name = re.sub(r"\[\d+\]$", "", path.split(".")[-1])
    pattern = re.compile(rf"\b{re.escape(name)}\s*[:{{<]")
    for number in range(start, min(end, len(lines)) + 1):
        if pattern.search(lines[number - 1].split("#", 1)[0]):
            return number
    return start


def read_fork_prototxt(path: str | os.PathLike, caffe_proto: str | os.PathLike
                       ) -> tuple[caffe_pb2.NetParameter, list[LayerBlock], list[ForkField]]:
    """Parse a prototxt with the fork's schema; return upstream's message, the layer blocks and the fields
    that needed care. Fields that would change a layer ninport converts raise ``NetError``."""
    schema = compile_schema(caffe_proto)
    source = os.fspath(path)
    text = read_text(source)
    fork_net = parse_text(text, schema.message_class("NetParameter")(), source, hint=False)
    net, findings = translate(fork_net, schema.package)
    blocks = scan_layer_blocks(text)
    lines = text.splitlines()
    starts = {"layer": [b.line for b in blocks if b.keyword == "layer"],
              "layers": [b.line for b in blocks if b.keyword == "layers"]}
    all_starts = sorted(b.line for b in blocks)
    for f in findings:
        if f.block is not None and f.block[1] < len(starts[f.block[0]]):
            start = starts[f.block[0]][f.block[1]]
            end = next((s - 1 for s in all_starts if s > start), len(lines))
            f.line = _field_line(lines, start, end, f.path)
    check_findings(findings, source)
    return net, blocks, findings


def read_fork_caffemodel(path: str | os.PathLike, caffe_proto: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a caffemodel with the fork's schema and translate it; its layer parameters are not checked (the
    prototxt's are), only its blobs are used."""
    schema = compile_schema(caffe_proto)
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise ParseError(f"{source}: no such file" if not os.path.exists(source) else f"{source}: not a file")
    with open(source, "rb") as f:
        data = f.read()
    if not data:
        raise ParseError(f"{source}: empty file, not a caffemodel")
    fork_net = schema.message_class("NetParameter")()
    try:
        fork_net.ParseFromString(data)
    except DecodeError as exc:
        raise ParseError(f"{source}: not a valid caffemodel for the fork's schema ({exc})") from None
    net, _ = translate(fork_net, schema.package)
    if not any([x.name for x in net.layer] + [x.name or x.layer.name for x in net.layers]):
        raise ParseError(f"{source}: not a valid caffemodel (no named layers in it)")
    return net


def fork_param(layer_param: caffe_pb2.LayerParameter, caffe_proto: str | os.PathLike) -> Message:
    """A layer's parameters in the fork's schema, for plugins converting a fork's layer types: use it for the
    fork-only fields (kept untouched); read fields upstream also has from ``layer_param`` itself, since the
    ones the translation moved or rewrote (``ceil_mode`` → ``round_mode``) are in upstream's form there."""
    schema = compile_schema(caffe_proto)
    out = schema.message_class("LayerParameter")()
    out.ParseFromString(layer_param.SerializeToString())
    return out
