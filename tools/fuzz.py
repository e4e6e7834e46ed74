"""Fuzz ninport's readers with mutated prototxt text and caffemodel bytes of small nets, for long runs.

Case N is made from seed N alone, so any finding replays with ``--replay N``. Each worker process runs cases
under a memory cap (RLIMIT_AS) and the parent kills a worker whose case outlives the timeout (a hang). The
summary counts outcomes and groups internal errors by exception type and innermost frame. Example:

    python tools/fuzz.py --cases 100000 --procs 2 --mode load
    python tools/fuzz.py --cases 3000 --procs 1 --mode convert --timeout 120
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# Seed nets: small, written here, covering the layer families and both file vintages.

NET_A = """name: "a"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

NET_B = """name: "b"
input: "data"
input_shape { dim: 2 dim: 4 dim: 6 dim: 6 }
layer { name: "split" type: "Split" bottom: "data" top: "s1" top: "s2" }
layer { name: "bn" type: "BatchNorm" bottom: "s1" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }
layer { name: "conv" type: "Convolution" bottom: "s2" top: "conv"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 group: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "bn" bottom: "conv" top: "sum" }
layer { name: "slice" type: "Slice" bottom: "sum" top: "p" top: "q" slice_param { axis: 1 slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "q" bottom: "p" top: "cat" concat_param { axis: 1 } }
layer { name: "ave" type: "Pooling" bottom: "cat" top: "ave"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "flat" type: "Flatten" bottom: "ave" top: "flat" flatten_param { axis: 1 end_axis: -1 } }
layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "arg" type: "ArgMax" bottom: "resh" top: "arg" argmax_param { top_k: 1 axis: 2 } }
"""

NET_V1 = """name: "v1"
input: "data"
input_dim: 1
input_dim: 2
input_dim: 8
input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 convolution_param { num_output: 3 kernel_size: 3 stride: 2 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 2 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
"""

NET_C = """name: "c"
layer { name: "data" type: "Input" top: "data" top: "aux" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "deconv" type: "Deconvolution" bottom: "data" top: "up"
  convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "aux" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "within" type: "LRN" bottom: "crop" top: "within"
  lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "prelu" type: "PReLU" bottom: "within" top: "within" }
layer { name: "power" type: "Power" bottom: "within" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "param" type: "Parameter" top: "w" parameter_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }
layer { name: "prod" type: "Eltwise" bottom: "pw" bottom: "w" top: "prod" eltwise_param { operation: PROD } }
layer { name: "tile" type: "Tile" bottom: "prod" top: "tile" tile_param { axis: 1 tiles: 2 } }
layer { name: "red" type: "Reduction" bottom: "tile" top: "red" reduction_param { axis: 1 } }
"""

SEEDS = {"a": NET_A, "b": NET_B, "v1": NET_V1, "c": NET_C}

INTERESTING = ["0", "1", "-1", "2", "3", "7", "65535", "1000000", "2147483647", "2147483648", "4294967295",
               "4294967296", "9223372036854775807", "-9223372036854775808", "18446744073709551615", "nan", "inf",
               "-inf", "1e30", "0.5", "1.0", "-2"]

SNIPPETS = ["stride: 0", "stride_w: 2", "stride_h: 0", "num_output: 0", "pad: 1000000", "kernel_size: 100000",
            "dilation: 0", "dilation: 3", "group: 0", "group: 3", "axis: 7", "axis: -9", "end_axis: 0",
            "top_k: 1000", "local_size: 4294967295", "local_size: 4", "dropout_ratio: 2", "dropout_ratio: nan",
            "bottom: \"data\"", "top: \"data\"", "top: \"fc\"", "bottom: \"nowhere\"", "pool: STOCHASTIC",
            "global_pooling: true", "round_mode: FLOOR", "kernel_h: 2", "kernel_w: 0", "slice_point: 9",
            "concat_dim: 3", "shape { }", "shape { dim: -3 }", "shape { dim: 0 }", "bias_term: false",
            "num_axes: 5", "tiles: 0", "operation: MAX", "coeff: 2", "transpose: true", "base: -3",
            "phase: TRAIN", "include { phase: TRAIN }", "exclude { phase: TEST }", "offset: 9",
            f"name: \"{'n' * 5000}\""]


def mutate_text(text: str, rng: random.Random) -> str:
    """One to four textual mutations of a prototxt: numbers, lines, names, snippets, truncation, bytes."""
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(range(9), weights=[14, 14, 14, 5, 5, 25, 10, 3, 3])[0]
        lines = text.split("\n")
        if kind <= 2:  # a number becomes an interesting one
            import re

            spans = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", text)]
            if spans:
                a, b = rng.choice(spans)
                text = text[:a] + rng.choice(INTERESTING) + text[b:]
        elif kind == 3 and len(lines) > 1:  # drop a line
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines)
        elif kind == 4:  # duplicate a line
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
        elif kind == 5:  # a snippet inside some block
            positions = [i for i, c in enumerate(text) if c == "{"]
            if positions:
                p = rng.choice(positions) + 1
                text = f"{text[:p]} {rng.choice(SNIPPETS)} {text[p:]}"
        elif kind == 6:  # a blob or layer name becomes another one
            import re

            names = re.findall(r'"([^"]*)"', text)
            spans = [m.span(1) for m in re.finditer(r'"([^"]*)"', text)]
            if spans:
                a, b = rng.choice(spans)
                text = text[:a] + rng.choice(names) + text[b:]
        elif kind == 7:  # truncate
            text = text[: rng.randrange(len(text) + 1)]
        else:  # random characters
            chars = list(text)
            for _ in range(rng.randint(1, 3)):
                if chars:
                    chars[rng.randrange(len(chars))] = rng.choice('{}":#\\\n 0-9aZ\x00\xff')
            text = "".join(chars)
    return text


def make_weights(text: str, rng: random.Random, layout: str = "v2") -> bytes | None:
    """Seeded weights that fit the net of ``text`` (None when the net does not read), serialized."""
    from ninport.caffe import caffe_pb2
    from ninport.caffe.caffemodel import array_to_blob
    from ninport.caffe.load import read_net
    from ninport.caffe.shapes import infer_shapes

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.prototxt")
        with open(path, "w") as f:
            f.write(text)
        net = read_net(path)
        shapes = infer_shapes(net)
    model = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layers:
        params = shapes.layers[layer.name].params
        if not params:
            continue
        entry = model.layer.add(name=layer.name, type=layer.type)
        for shape in params:
            values = np.asarray(rng.random() * np.ones(shape) + 0.1, np.float32)
            entry.blobs.append(array_to_blob(values, legacy=layout == "v1" and len(shape) <= 4))
    return model.SerializeToString()


def mutate_weights(data: bytes, rng: random.Random) -> bytes:
    """Structured mutations of a caffemodel's blobs (shapes, legacy dims, counts, doubles) or raw byte noise."""
    from ninport.caffe import caffe_pb2

    kind = rng.randrange(10)
    if kind >= 8:  # bytes: flips, truncation, insertion
        buf = bytearray(data)
        if kind == 8 and buf:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        else:
            cut = rng.randrange(len(buf) + 1)
            buf = buf[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))) + buf[cut:]
        return bytes(buf)
    model = caffe_pb2.NetParameter()
    model.ParseFromString(data)
    blobs = [b for layer in model.layer for b in layer.blobs]
    if not blobs:
        return data
    blob = rng.choice(blobs)
    dims = [int(v) for v in INTERESTING if v.lstrip("-").isdigit()]
    if kind == 0 and blob.shape.dim:  # a dim changes
        i = rng.randrange(len(blob.shape.dim))
        blob.shape.dim[i] = max(min(rng.choice(dims + [blob.shape.dim[i] * 2, 1]), 2**63 - 1), -(2**63))
    elif kind == 1:  # the shape message goes, values stay
        blob.ClearField("shape")
    elif kind == 2:  # legacy dims appear, agreeing or not
        n = int(np.prod(blob.shape.dim)) if blob.shape.dim else len(blob.data)
        blob.num, blob.channels, blob.height = 1, 1, rng.choice([1, 2])
        blob.width = rng.choice([n, n // 2, n + 1, 0])
    elif kind == 3:  # fewer or more values
        values = list(blob.data)
        del blob.data[:]
        blob.data.extend(values[:-1] if rng.random() < 0.5 else values + [1.0])
    elif kind == 4:  # doubles as well, maybe of another count
        blob.double_data.extend([0.5] * (len(blob.data) + rng.choice([0, 0, 1, -1])))
    elif kind == 5:  # shape with extra axes of 1, or a dropped axis
        if rng.random() < 0.5:
            blob.shape.dim.insert(0, 1)
        elif blob.shape.dim:
            del blob.shape.dim[-1]
    elif kind == 6:  # a layer loses a blob, or a layer is renamed
        layer = rng.choice([x for x in model.layer if x.blobs])
        if rng.random() < 0.5:
            del layer.blobs[-1]
        else:
            layer.name = layer.name + "_x"
    else:  # a blob of a huge declared size with few values
        del blob.shape.dim[:]
        blob.shape.dim.extend([2**31, 2**31, 4])
    return model.SerializeToString()


def make_case(seed: int, mode: str) -> tuple[str, bytes | None, str]:
    """The case of ``seed``: prototxt text, caffemodel bytes (or None), and a description."""
    rng = random.Random(seed)
    name = rng.choice(sorted(SEEDS))
    text = SEEDS[name]
    weights = None
    what = []
    if mode == "convert" or rng.random() < 0.5:
        weights = make_weights(text, rng, layout=rng.choice(["v1", "v2"]))
    target = rng.random()
    if weights is None or target < 0.5:
        text = mutate_text(text, rng)
        what.append("text")
    if weights is not None and (target >= 0.4):
        weights = mutate_weights(weights, rng)
        what.append("weights")
    return text, weights, f"{name}:{'+'.join(what)}"


# ---------------------------------------------------------------------------------------------------------
# An oracle independent of ninport's weight reader: protobuf's own parse and Caffe's ShapeEquals, restated
# from caffe/src/caffe/blob.cpp (legacy dims win when any is set; a net blob over 4 axes never matches them;
# otherwise the shape dims must be equal; then the value count must be the net blob's count).


def caffe_would_refuse(weights: bytes, net, shapes) -> str | None:
    from ninport.caffe import caffe_pb2

    model = caffe_pb2.NetParameter()
    try:
        model.ParseFromString(weights)
    except Exception:
        return "not parseable by protobuf"
    found = {}
    for layer in list(model.layers) + list(model.layer):
        if layer.blobs and layer.name not in found:
            found[layer.name] = list(layer.blobs)
    for layer in net.layers:
        expected = shapes.layers[layer.name].params
        blobs = found.get(layer.name, [])
        if len(blobs) != len(expected):
            return f"{layer.name}: {len(blobs)} blobs for {len(expected)}"
        for blob, shape in zip(blobs, expected):
            legacy = [blob.HasField(f) for f in ("num", "channels", "height", "width")]
            if any(legacy):
                if len(shape) > 4 or [blob.num, blob.channels, blob.height, blob.width] != \
                        [1] * (4 - len(shape)) + list(shape):
                    return f"{layer.name}: legacy dims differ"
            elif list(blob.shape.dim) != list(shape):
                return f"{layer.name}: shape differs"
            count = math.prod(shape)
            have = len(blob.double_data) if len(blob.double_data) else len(blob.data)
            if have != count:
                return f"{layer.name}: {have} values for {count}"
    return None


# ---------------------------------------------------------------------------------------------------------


def run_case(seed: int, mode: str, folder: str) -> dict:
    """Run one case in ``folder``; the outcome: ok, error (NinportError), internal, or refusable."""
    from ninport.errors import NinportError

    text, weights, what = make_case(seed, mode)
    proto = os.path.join(folder, "net.prototxt")
    model = os.path.join(folder, "w.caffemodel")
    with open(proto, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    if weights is not None:
        with open(model, "wb") as f:
            f.write(weights)
    before = sorted(os.listdir(folder))
    outcome = {"seed": seed, "what": what}
    try:
        if mode == "convert":
            from ninport.convert import convert

            convert(proto, model, os.path.join(folder, "out.onnx"))
            outcome["result"] = "ok"
        else:
            from ninport.caffe.load import load_net

            net, shapes = load_net(proto, model if weights is not None else None)
            outcome["result"] = "ok"
            if weights is not None:
                refusal = caffe_would_refuse(weights, net, shapes)
                if refusal:
                    outcome.update(result="refusable", detail=refusal)
    except NinportError as exc:
        outcome["result"] = "error"
        line = str(exc)
        if "\n" in line or len(line) > 1000:
            outcome.update(result="internal", kind="bad error line", where=line[:200])
        after = sorted(os.listdir(folder))
        if after != before:
            outcome.update(result="internal", kind="files left behind", where=str(sorted(set(after) - set(before))))
    except BaseException as exc:  # noqa: BLE001 - everything else is what the fuzzer hunts
        if isinstance(exc, KeyboardInterrupt):
            raise
        frames = traceback.extract_tb(exc.__traceback__)
        inner = frames[-1] if frames else None
        outcome.update(result="internal", kind=type(exc).__name__,
                       where=f"{os.path.basename(inner.filename)}:{inner.lineno} {inner.name}" if inner else "?",
                       message=str(exc)[:200])
    return outcome


def _worker(seeds, mode: str, memory_mb: int, timeout: float, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def alarm(*_):
        raise TimeoutError("case timed out")

    signal.signal(signal.SIGALRM, alarm)
    with tempfile.TemporaryDirectory(prefix="ninport-fuzz-") as root:
        for seed in seeds:
            folder = os.path.join(root, str(seed))
            os.mkdir(folder)
            queue.put(("start", seed, time.time()))
            signal.alarm(max(1, int(timeout)))
            try:
                outcome = run_case(seed, mode, folder)
            except TimeoutError:
                outcome = {"seed": seed, "result": "hang"}
            finally:
                signal.alarm(0)
            if outcome.get("kind") == "TimeoutError":
                outcome = {"seed": seed, "result": "hang"}
            queue.put(("done", seed, outcome))
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.rmdir(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--mode", choices=["load", "convert"], default="load")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it is a hang")
    parser.add_argument("--memory-mb", type=int, default=None, help="RLIMIT_AS per worker (0: none)")
    parser.add_argument("--replay", type=int, help="run one seed here and print its outcome and files")
    parser.add_argument("--json", help="write the summary and every finding to this file")
    args = parser.parse_args(argv)
    memory = args.memory_mb if args.memory_mb is not None else (2048 if args.mode == "load" else 0)
    if args.mode == "convert":
        # onnxruntime checks in the worker itself: one helper process per case would dominate the run.
        os.environ.setdefault("NINPORT_CHECK_IN_PROCESS", "1")
    if args.replay is not None:
        text, weights, what = make_case(args.replay, args.mode)
        print(f"case {args.replay} ({what}):\n{text[:3000]}")
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(run_case(args.replay, args.mode, folder), indent=1))
        return 0
    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)  # even under nohup, which ignores SIGINT
    signal.signal(signal.SIGTERM, stop)
    seeds = list(range(args.start, args.start + args.cases))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    chunks = [seeds[i::args.procs] for i in range(args.procs)]
    workers: dict[int, tuple] = {}

    def spawn(index: int, todo: list[int]) -> None:
        proc = ctx.Process(target=_worker, args=(todo, args.mode, memory, args.timeout, queue), daemon=True)
        proc.start()
        workers[index] = (proc, todo)

    for i, chunk in enumerate(chunks):
        if chunk:
            spawn(i, chunk)
    owner = {seed: i for i, chunk in enumerate(chunks) for seed in chunk}
    running: dict[int, tuple[int, float]] = {}  # worker -> (seed, start)
    counts: collections.Counter = collections.Counter()
    internal: dict[tuple, list[int]] = collections.defaultdict(list)
    findings: list[dict] = []
    done = 0
    started = time.time()
    every = 5000 if args.mode == "load" else 100
    while done < len(seeds):
        try:
            kind, seed, payload = queue.get(timeout=1.0)
        except KeyboardInterrupt:  # stop early (Ctrl-C, kill -INT): summarize what ran
            print("interrupted", flush=True)
            break
        except Exception:  # queue.Empty: look for hung or dead workers
            kind = None
        if kind == "start":
            running[owner[seed]] = (seed, payload)
        elif kind == "done":
            running.pop(owner[seed], None)
            counts[payload["result"]] += 1
            done += 1
            if payload["result"] in ("internal", "refusable", "hang"):
                findings.append(payload)
                key = (payload["result"], payload.get("kind", payload.get("detail", "")), payload.get("where", ""))
                internal[key].append(seed)
            if done % every == 0:
                print(f"{done} cases, {dict(counts)}, {time.time() - started:.0f} s", flush=True)
        now = time.time()
        for index, (proc, todo) in list(workers.items()):
            seed, since = running.get(index, (None, now))
            dead = not proc.is_alive()
            if seed is not None and (dead or now - since > 2 * args.timeout + 5):
                # A hang the alarm could not break, or a worker killed (e.g. by the memory cap).
                proc.kill()
                proc.join()
                result = "hang" if not dead else "crash"
                counts[result] += 1
                done += 1
                findings.append({"seed": seed, "result": result})
                internal[(result, "", "")].append(seed)
                running.pop(index, None)
                rest = todo[todo.index(seed) + 1:]
                if rest:
                    spawn(index, rest)
                else:
                    workers.pop(index)
    for proc, _ in workers.values():
        proc.kill() if done < len(seeds) else proc.join(timeout=10)
    elapsed = time.time() - started
    print(f"\n{done} of {len(seeds)} cases ({args.mode}, seeds from {args.start}) in {elapsed:.0f} s "
          f"with {args.procs} processes: {dict(counts)}")
    for (result, kind, where), cases in sorted(internal.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(cases):6d}  {result:10s} {kind} {where}   e.g. --replay {cases[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": dict(counts), "findings": findings, "seconds": elapsed}, f)
    bad = counts["internal"] + counts["hang"] + counts["crash"] + counts["refusable"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
