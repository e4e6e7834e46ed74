"""Mutated prototxt text and caffemodel bytes of small nets end in success or one ``NinportError``, never in
another exception, a leftover file, weights Caffe would refuse, or a large allocation. The mutators and the
independent weights oracle are tools/fuzz.py's (which runs the same cases by the 100,000)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninport.caffe.load import load_net
from ninport.errors import NinportError

_spec = importlib.util.spec_from_file_location("ninport_fuzz", Path(__file__).parent.parent / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

NETS = sorted(fuzz.SEEDS)
# Generous per case: a bound on hangs and runaway work, not a speed test (cases take milliseconds).
CASE_SECONDS = 20.0
CASE_BYTES = 64 << 20


def _case(rng, net: str, mutate_text: bool, mutate_weights: bool, with_weights: bool):
    text = fuzz.SEEDS[net]
    weights = fuzz.make_weights(text, rng, rng.choice(["v1", "v2"])) if with_weights or mutate_weights else None
    if mutate_text or weights is None:
        text = fuzz.mutate_text(text, rng)
    if mutate_weights and weights is not None:
        weights = fuzz.mutate_weights(weights, rng)
    return text, weights


def _write(folder: str, text: str, weights: bytes | None) -> tuple[str, str | None]:
    proto = os.path.join(folder, "net.prototxt")
    with open(proto, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    model = None
    if weights is not None:
        model = os.path.join(folder, "w.caffemodel")
        with open(model, "wb") as f:
            f.write(weights)
    return proto, model


@settings(max_examples=3000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rng=st.randoms(use_true_random=False), net=st.sampled_from(NETS), mutate_text=st.booleans(),
       mutate_weights=st.booleans(), with_weights=st.booleans())
def test_load_ends_in_success_or_one_ninport_error(rng, net, mutate_text, mutate_weights, with_weights):
    text, weights = _case(rng, net, mutate_text, mutate_weights, with_weights)
    with tempfile.TemporaryDirectory() as folder:
        proto, model = _write(folder, text, weights)
        before = sorted(os.listdir(folder))
        start = time.monotonic()
        tracemalloc.start()
        try:
            net_, shapes = load_net(proto, model)
        except NinportError as exc:
            line = str(exc)
            assert "\n" not in line and len(line) < 1000
            net_ = None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.monotonic() - start < CASE_SECONDS
        assert peak < CASE_BYTES, f"{peak:,} bytes for a net of a few KB"
        assert sorted(os.listdir(folder)) == before
        if net_ is not None and weights is not None:
            refusal = fuzz.caffe_would_refuse(weights, net_, shapes)
            assert refusal is None, f"loaded weights Caffe refuses: {refusal}"


@pytest.fixture(scope="module")
def in_process_checks():
    old = os.environ.get("NINPORT_CHECK_IN_PROCESS")
    os.environ["NINPORT_CHECK_IN_PROCESS"] = "1"  # no helper process per example
    yield
    if old is None:
        del os.environ["NINPORT_CHECK_IN_PROCESS"]
    else:
        os.environ["NINPORT_CHECK_IN_PROCESS"] = old


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=False), net=st.sampled_from(NETS), mutate_text=st.booleans())
def test_convert_ends_whole_or_leaves_nothing(in_process_checks, rng, net, mutate_text):
    from ninport.convert import convert

    text, weights = _case(rng, net, mutate_text, not mutate_text, True)
    with tempfile.TemporaryDirectory() as folder:
        proto, model = _write(folder, text, weights)
        before = sorted(os.listdir(folder))
        try:
            convert(proto, model, os.path.join(folder, "out.onnx"))
        except NinportError as exc:
            assert "\n" not in str(exc)
            assert sorted(os.listdir(folder)) == before  # no partial output, no temporary file
        else:
            assert sorted(os.listdir(folder)) == sorted(before + ["out.onnx", "out.pt"])
