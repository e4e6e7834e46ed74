"""The plugin API: ``ninport.register_layer`` with a shape rule, the ``ninport.layers`` entry points, overrides
only on purpose, and the worked example of docs/plugins.md, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from layer_harness import check_net, write_net
from torch import nn

import ninport
import ninport.torch.registry as registry
from ninport.caffe import shapes
from ninport.caffe.shapes import LayerShapes
from ninport.errors import NetError, NinportError
from ninport.torch.support import support_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone afterwards (built-ins loaded first, so they are in the snapshot)."""
    registry.converters()
    saved = (dict(registry.CONVERTERS), dict(registry.NOTES), dict(registry.BUILTIN_NOTES),
             dict(registry.REPLACED_RULES), dict(shapes.RULES), registry._entry_points_loaded)
    yield
    for target, value in zip((registry.CONVERTERS, registry.NOTES, registry.BUILTIN_NOTES, registry.REPLACED_RULES,
                              shapes.RULES), saved):
        target.clear()
        target.update(value)
    registry._entry_points_loaded = saved[-1]


class Affine(nn.Module):
    """A custom layer with weights: y = x * a + b per channel."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.a, self.b = nn.Parameter(a), nn.Parameter(b)

    def forward(self, x):
        return x * self.a.view(1, -1, 1, 1) + self.b.view(1, -1, 1, 1)


def affine_shape(layer, bottoms):
    channels = bottoms[0][1]
    return LayerShapes([bottoms[0]], [(channels,), (channels,)])


def register_affine():
    @ninport.register_layer("ChannelAffine", shape=affine_shape, notes="per-channel x * a + b")
    def affine(ctx):
        return Affine(ctx.weight(0), ctx.weight(1))


AFFINE_NET = (
    'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 4 }\n'
    'layer { name: "aff" type: "ChannelAffine" bottom: "data" top: "aff" }\n'
    'layer { name: "relu" type: "ReLU" bottom: "aff" top: "aff" }\n'
)


def test_custom_layer_with_weights_converts(tmp_path, clean_registry, run_cli):
    register_affine()
    a, b = np.array([1.5, -2.0, 0.5], np.float32), np.array([0.1, 0.2, -0.3], np.float32)
    proto, model = write_net(tmp_path, AFFINE_NET, [("aff", "ChannelAffine", [a, b])])
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    expected = np.maximum(x * a.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1), 0)
    check_net(tmp_path, proto, model, {"data": x}, {"aff": expected})
    # The command line converts it too, and checks the weights against the plugin's shape rule.
    result = run_cli("convert", proto, model, "-o", tmp_path / "aff.onnx")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "aff.onnx").exists()
    bad = write_net(tmp_path, AFFINE_NET, [("aff", "ChannelAffine", [a[:2], b])], name="bad")[1]
    result = run_cli("convert", proto, bad, "-o", tmp_path / "bad.onnx")
    assert result.exit_code == 1 and "'aff'" in result.stderr and "[3]" in result.stderr


def test_plugin_types_appear_in_the_support_table(clean_registry, run_cli):
    register_affine()
    result = run_cli("layers", "--json")
    rows = {r["type"]: r for r in __import__("json").loads(result.stdout)}
    assert rows["ChannelAffine"]["status"] == "converted"
    assert rows["ChannelAffine"]["source"] == __name__
    assert "ChannelAffine" not in {r.type for r in support_table(include_plugins=False)}


def test_overriding_a_builtin_needs_override(clean_registry):
    with pytest.raises(ValueError, match="'ReLU' is built into ninport; pass override=True"):
        ninport.register_layer("ReLU")(lambda ctx: nn.Identity())
    assert registry.is_builtin("ReLU")  # nothing was replaced


def test_override_replaces_a_builtin_on_purpose(tmp_path, clean_registry):
    @ninport.register_layer("ReLU", override=True)
    def negate(ctx):
        return Negate()

    class Negate(nn.Module):
        def forward(self, x):
            return -x

    proto, _ = write_net(tmp_path, 'input: "data"\ninput_shape { dim: 1 dim: 4 }\n'
                         'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    x = np.array([[1, -2, 3, -4]], np.float32)
    check_net(tmp_path, proto, None, {"data": x}, {"r": -x})
    assert not registry.is_builtin("ReLU")
    assert "ReLU" not in {r.type for r in support_table() if r.source == "built-in"}
    assert "ReLU" in {r.type for r in support_table(include_plugins=False) if r.status == "converted"}


def test_registering_a_type_twice_or_its_shape_rule_again_raises(clean_registry):
    register_affine()
    with pytest.raises(ValueError, match="'ChannelAffine' is already registered"):
        register_affine()
    # Accuracy has ninport's shape rule but no converter: giving it a converter is fine, a new rule is not.
    with pytest.raises(ValueError, match="a shape rule for 'Accuracy' is already registered"):
        ninport.register_layer("Accuracy", shape=affine_shape)(lambda ctx: nn.Identity())
    assert "Accuracy" not in registry.CONVERTERS


def test_converter_without_shape_rule_is_named(tmp_path, clean_registry):
    ninport.register_layer("NoRule")(lambda ctx: nn.Identity())
    proto, _ = write_net(tmp_path, 'input: "data"\ninput_shape { dim: 1 dim: 4 }\n'
                         'layer { name: "odd" type: "NoRule" bottom: "data" top: "odd" }\n')
    with pytest.raises(NetError, match=r"NoRule have a converter but no shape rule .*shape=fn.*'odd'"):
        ninport.load(proto)


def test_shape_rule_returning_nonsense_is_named(tmp_path, clean_registry):
    ninport.register_layer("Weird", shape=lambda layer, bottoms: 42)(lambda ctx: nn.Identity())
    proto, _ = write_net(tmp_path, 'input: "data"\ninput_shape { dim: 1 dim: 4 }\n'
                         'layer { name: "w" type: "Weird" bottom: "data" top: "w" }\n')
    with pytest.raises(NinportError, match="registered for 'Weird' returned 42"):
        ninport.load(proto)


def _fake_distribution(root: Path, module: str, source: str, entry: str) -> None:
    """An installed distribution as importlib.metadata finds it: a .dist-info folder on sys.path."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module.replace('_', '-')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ninport.layers]\n{entry}\n")


PLUGIN_SOURCE = '''
from torch import nn
import ninport


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


@ninport.register_layer("Doubler", shape=lambda layer, bottoms: [bottoms[0]], notes="2x")
def doubler(ctx):
    return Doubler()
'''


def test_entry_point_plugin_is_loaded(tmp_path, monkeypatch, clean_registry):
    _fake_distribution(tmp_path, "ninport_test_doubler", PLUGIN_SOURCE, "doubler = ninport_test_doubler")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points_loaded = False
    assert "Doubler" in registry.converters()
    proto, _ = write_net(tmp_path, 'input: "data"\ninput_shape { dim: 1 dim: 3 }\n'
                         'layer { name: "d" type: "Doubler" bottom: "data" top: "d" }\n')
    x = np.array([[1, 2, 3]], np.float32)
    check_net(tmp_path, proto, None, {"data": x}, {"d": 2 * x})


def test_broken_entry_point_plugin_is_one_clear_error(tmp_path, monkeypatch, clean_registry):
    _fake_distribution(tmp_path, "ninport_test_broken", "raise RuntimeError('no GPU here')\n",
                       "broken = ninport_test_broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points_loaded = False
    with pytest.raises(NinportError, match=r"plugin 'broken' \(ninport_test_broken\) failed to load: "
                                           r"RuntimeError: no GPU here"):
        registry.converters()


def test_docs_worked_example_runs(clean_registry):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    example = next(b for b in blocks if "class Mish" in b)
    scope: dict = {"__name__": "plugins_md_example"}
    exec(compile(example, str(DOCS), "exec"), scope)  # its own asserts check the numbers
    assert type(scope["model"].get_submodule("act")).__name__ == "Mish"
    assert "Mish" in registry.converters()
