"""Readers for the data sets of the NiN paper, in the formats people download, plus Caffe's data transform.

Every reader gives images as float32 N×C×H×W with the values the file holds (0–255 for CIFAR, SVHN, MNIST and
ImageNet, 0–16 for the 8×8 digits) and labels as int64 N. Nothing is downloaded; nothing here imports torch.

API (also used by ``ninport train``):

    images, labels = load_dataset("digits", split="train")            # 1437×1×8×8, bundled with scikit-learn
    images, labels = load_dataset("cifar10", "~/data/cifar-10-batches-py", split="test")
    ds = open_dataset("imagenet", "~/ILSVRC2012_val", split="val")   # lazy: decodes per batch
    for images, labels in ds.batches(50): ...

``name`` is one of ``DATASETS``; ``split`` is ``"train"`` or ``"test"`` (``"val"`` is a synonym of
``"test"``; SVHN also has ``"extra"``). What ``path`` may be, per data set:

- ``cifar10``: the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``), its
  parent, or the ``cifar-10-python.tar.gz`` archive itself. Channels in the file's order, RGB.
- ``cifar100``: the ``cifar-100-python`` folder (``train``, ``test``, ``meta``), its parent or the archive;
  ``label="fine"`` (100 classes, default) or ``"coarse"`` (20 superclasses).
- ``svhn``: a folder with ``train_32x32.mat``/``test_32x32.mat``/``extra_32x32.mat`` or one ``.mat`` file.
  ``X`` is 32×32×3×N (RGB); ``y`` is 1..10 where 10 stands for the digit 0, so labels become 0..9.
- ``mnist``: a folder with the four idx files (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, ...),
  gzipped or raw. Images 1×28×28.
- ``imagenet``: a folder of images with Caffe's ``val.txt`` (``file label`` lines) inside, or the list file
  itself (images relative to its folder, or to ``root``). Each image is decoded to BGR and resized to 256×256,
  as Caffe's ``create_imagenet.sh`` built the LMDB the gist's model was tested on (OpenCV when installed).
- ``digits``: no path; scikit-learn's bundled 8×8 digits (1797 images, values 0..16). The split is fixed:
  a permutation by ``numpy.random.default_rng(0)``, the first 1437 for ``train``, the last 360 for ``test``.

``Transform`` applies Caffe's ``transform_param`` (crop, mirror, mean file or values, scale);
``GcnZca`` is the paper's CIFAR preprocessing (global contrast normalization, then ZCA whitening fitted on the
training split, as pylearn2's make_cifar10_gcn_whitened.py); ``load_dataset(..., preprocess="gcn_zca")`` fits on
``train`` and applies to ``split``. (For SVHN the paper used local contrast normalization, which is not here.)
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ninport.errors import NinportError, ParseError

DATASETS = ("cifar10", "cifar100", "svhn", "mnist", "imagenet", "digits")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10, "imagenet": 1000, "digits": 10}
DIGITS_TRAIN = 1437  # of 1797; the remaining 360 are the test split
DIGITS_SEED = 0
IMAGENET_SIZE = 256  # create_imagenet.sh: RESIZE_HEIGHT = RESIZE_WIDTH = 256
_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test", "extra": "extra"}


@dataclass
class Dataset:
    """One split of a data set: labels in memory, images in memory or decoded on demand (ImageNet)."""

    name: str
    split: str
    labels: np.ndarray  # int64 N
    source: str
    channel_order: str  # "RGB", "BGR" or "gray"
    num_classes: int
    class_names: list[str] | None = None
    array: np.ndarray | None = None  # float32 N×C×H×W when held in memory
    files: list[str] | None = None  # image paths when decoded per batch
    decoder: str = "array"  # how images are obtained: "array", "opencv" or "pillow"
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.array is not None:
            return tuple(int(d) for d in self.array.shape[1:])  # type: ignore[return-value]
        return (3, IMAGENET_SIZE, IMAGENET_SIZE)

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images ``start:stop`` as float32 N×C×H×W."""
        stop = len(self) if stop is None else min(stop, len(self))
        if self.array is not None:
            return self.array[start:stop]
        assert self.files is not None
        return np.stack([_decode_imagenet(p, self.decoder) for p in self.files[start:stop]])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) in order, ``batch_size`` at a time; the last batch may be smaller."""
        if batch_size < 1:
            raise NinportError(f"batch size must be positive, got {batch_size}")
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            yield self.images(start, stop), self.labels[start:stop]


def open_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    split: str = "test",
    *,
    label: str = "fine",
    root: str | os.PathLike | None = None,
) -> Dataset:
    """Open one split of data set ``name`` (see the module docstring for what ``path`` may be)."""
    name = normalize_name(name)
    if split not in _SPLITS:
        raise NinportError(f"unknown split {split!r}; use train or test")
    which = _SPLITS[split]
    if which == "extra" and name != "svhn":
        raise NinportError(f"split 'extra' exists only for svhn, not {name}")
    if name == "digits":
        return _digits(which)
    if path is None:
        raise NinportError(f"--data PATH is needed for {name} (only 'digits' ships with a package)")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file or folder")
    if name == "cifar10":
        return _cifar(path, which, hundred=False, label="fine")
    if name == "cifar100":
        if label not in ("fine", "coarse"):
            raise NinportError(f"cifar100 labels are 'fine' or 'coarse', not {label!r}")
        return _cifar(path, which, hundred=True, label=label)
    if name == "svhn":
        return _svhn(path, which)
    if name == "mnist":
        return _mnist(path, which)
    return _imagenet(path, which, root)


def load_dataset(
    name: str,
    path: str | os.PathLike | None = None,
    split: str = "train",
    *,
    label: str = "fine",
    preprocess: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N×C×H×W, labels int64 N) of one split, all in memory.

    ``preprocess="gcn_zca"``: the paper's CIFAR/SVHN preprocessing, fitted on the train split.
    """
    ds = open_dataset(name, path, split, label=label)
    images = ds.images()
    if preprocess in (None, "", "none"):
        return images, ds.labels
    if preprocess.replace("-", "_").replace("+", "_").lower() != "gcn_zca":
        raise NinportError(f"unknown preprocessing {preprocess!r}; use gcn_zca or none")
    train = images if _SPLITS[split] == "train" else open_dataset(name, path, "train", label=label).images()
    return GcnZca().fit(train).apply(images), ds.labels


def normalize_name(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = {"ilsvrc": "imagenet", "ilsvrc2012": "imagenet", "sklearndigits": "digits"}.get(key, key)
    if key not in DATASETS:
        raise NinportError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return key


# --------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: python pickles (dicts with byte-string keys, as the Python 2 cPickle wrote them)


class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds (a dict of numpy arrays, lists, bytes): no arbitrary code from a pickle."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise ParseError(f"{where}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{where}: not a CIFAR python batch (a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


class _Files:
    """A folder, or a .tar.gz archive, seen as a set of named members (found by base name)."""

    def __init__(self, path: str):
        self.path = path
        self.tar = None
        self.names: dict[str, str] = {}
        if os.path.isdir(path):
            for dirpath, _dirs, files in os.walk(path):
                for f in files:
                    self.names.setdefault(f, os.path.join(dirpath, f))
                if dirpath.count(os.sep) - path.count(os.sep) >= 1:
                    _dirs[:] = []  # the folder itself or one level down (the archive's top folder)
        elif tarfile.is_tarfile(path):
            self.tar = tarfile.open(path)
            for member in self.tar.getmembers():
                if member.isfile():
                    self.names.setdefault(os.path.basename(member.name), member.name)
        else:
            self.names[os.path.basename(path)] = path

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str) -> bytes:
        if self.tar is not None:
            handle = self.tar.extractfile(self.names[name])
            assert handle is not None
            return handle.read()
        with open(self.names[name], "rb") as f:
            return f.read()

    def where(self, name: str) -> str:
        return f"{self.path}:{self.names[name]}" if self.tar is not None else self.names[name]


def _cifar(path: str, split: str, hundred: bool, label: str) -> Dataset:
    files = _Files(path)
    if split == "extra":
        raise NinportError("CIFAR has no 'extra' split")
    if hundred:
        members = ["train"] if split == "train" else ["test"]
        label_key, meta_name, names_key = f"{label}_labels", "meta", f"{label}_label_names"
    else:
        members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_name, names_key = "labels", "batches.meta", "label_names"
    present = [m for m in members if files.has(m)]
    if not present:
        kind = "cifar-100-python" if hundred else "cifar-10-batches-py"
        raise ParseError(f"{path}: no {' / '.join(members[:2])}{' ...' if len(members) > 2 else ''} here "
                         f"(give the {kind} folder or its .tar.gz)")
    if split == "train" and not hundred and len(present) < len(members):
        missing = sorted(set(members) - set(present))
        raise ParseError(f"{path}: training batches missing: {', '.join(missing)}")
    datas, labels = [], []
    for m in present:
        batch = _unpickle(files.read(m), files.where(m))
        if "data" not in batch or label_key not in batch:
            raise ParseError(f"{files.where(m)}: a CIFAR batch needs 'data' and {label_key!r} "
                             f"(has {', '.join(sorted(map(str, batch)))})")
        data = np.asarray(batch["data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ParseError(f"{files.where(m)}: 'data' is {list(data.shape)}, expected N×3072")
        lab = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if lab.shape[0] != data.shape[0]:
            raise ParseError(f"{files.where(m)}: {data.shape[0]} images but {lab.shape[0]} labels")
        datas.append(data.astype(np.float32).reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane
        labels.append(lab)
    classes = 100 if hundred and label == "fine" else 20 if hundred else 10
    names = None
    if files.has(meta_name):
        meta = _unpickle(files.read(meta_name), files.where(meta_name))
        raw = meta.get(names_key)
        if raw is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    label_array = np.concatenate(labels)
    _check_labels(label_array, classes, path)
    return Dataset(name="cifar100" if hundred else "cifar10", split=split, labels=label_array, source=path,
                   channel_order="RGB", num_classes=classes, class_names=names, array=np.concatenate(datas))


# --------------------------------------------------------------------------------------------------------
# SVHN: MATLAB .mat (format 2, cropped digits)


def _svhn(path: str, split: str) -> Dataset:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise NinportError("reading SVHN .mat files needs scipy: pip install 'ninport[reproduce]'") from None
    if os.path.isdir(path):
        file = os.path.join(path, f"{split}_32x32.mat")
        if not os.path.exists(file):
            raise ParseError(f"{path}: no {split}_32x32.mat here")
    else:
        file = path
    try:
        mat = loadmat(file)
    except Exception as exc:
        raise ParseError(f"{file}: not a MATLAB .mat file scipy can read ({exc})") from None
    if "X" not in mat or "y" not in mat:
        raise ParseError(f"{file}: an SVHN .mat needs variables X and y")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3:
        raise ParseError(f"{file}: X is {list(x.shape)}, expected 32×32×3×N")
    if x.shape[3] != y.shape[0]:
        raise ParseError(f"{file}: {x.shape[3]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise ParseError(f"{file}: labels run {int(y.min())}..{int(y.max())}; SVHN's are 1..10 (10 = digit 0)")
    labels = (y.astype(np.int64) % 10)  # SVHN writes the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.float32)  # H×W×C×N → N×C×H×W
    return Dataset(name="svhn", split=split, labels=labels, source=file, channel_order="RGB", num_classes=10,
                   class_names=[str(d) for d in range(10)], array=images)


# --------------------------------------------------------------------------------------------------------
# MNIST: idx files (big-endian header: two zero bytes, a type code, the number of dimensions, then the sizes)

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
MNIST_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def read_idx(path: str) -> np.ndarray:
    """An idx file (gzipped or not) as a numpy array of its declared type and shape."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ParseError(f"{path}: broken gzip stream ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ParseError(f"{path}: not an idx file (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ParseError(f"{path}: idx header cut short")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise ParseError(f"{path}: idx header declares {list(shape)} ({count * dtype.itemsize} bytes) but "
                         f"{len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=header, count=count).reshape(shape)


def _find_idx(folder: str, prefix: str, kind: str) -> str:
    """``train-images-idx3-ubyte`` and the variants people end up with (``.gz``, ``train-images.idx3-ubyte``)."""
    candidates = []
    for f in sorted(os.listdir(folder)):
        low = f.lower()
        if low.startswith(prefix) and kind in low and "idx" in low:
            candidates.append(f)
    if not candidates:
        raise ParseError(f"{folder}: no {prefix}-{kind}-idx file (raw or .gz) here")
    raw = [c for c in candidates if not c.endswith(".gz")]
    return os.path.join(folder, (raw or candidates)[0])


def _mnist(path: str, split: str) -> Dataset:
    if not os.path.isdir(path):
        raise ParseError(f"{path}: give the folder holding MNIST's four idx files")
    prefix = "train" if split == "train" else "t10k"
    image_file = _find_idx(path, prefix, "images")
    label_file = _find_idx(path, prefix, "labels")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3:
        raise ParseError(f"{image_file}: {images.ndim} dimensions, MNIST images have 3 (magic {MNIST_IMAGES_MAGIC})")
    if labels.ndim != 1:
        raise ParseError(f"{label_file}: {labels.ndim} dimensions, MNIST labels have 1 (magic {MNIST_LABELS_MAGIC})")
    if images.shape[0] != labels.shape[0]:
        raise ParseError(f"{image_file}: {images.shape[0]} images but {label_file} has {labels.shape[0]} labels")
    label_array = labels.astype(np.int64)
    _check_labels(label_array, 10, label_file)
    return Dataset(name="mnist", split=split, labels=label_array, source=path, channel_order="gray",
                   num_classes=10, class_names=[str(d) for d in range(10)],
                   array=images.astype(np.float32)[:, None, :, :])


# --------------------------------------------------------------------------------------------------------
# ImageNet validation: a folder of JPEGs and Caffe's val.txt


def _imagenet(path: str, split: str, root: str | os.PathLike | None) -> Dataset:
    if os.path.isdir(path):
        list_file = next((os.path.join(path, n) for n in ("val.txt", "test.txt", f"{split}.txt")
                          if os.path.exists(os.path.join(path, n))), None)
        if list_file is None:
            raise ParseError(f"{path}: no val.txt (Caffe's 'file label' list) in this folder")
    else:
        list_file = path
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(list_file))
    files, labels = [], []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ParseError(f"{list_file}:{number}: expected 'file label', got {line.strip()!r}")
            try:
                labels.append(int(parts[1]))
            except ValueError:
                raise ParseError(f"{list_file}:{number}: label {parts[1]!r} is not an integer") from None
            files.append(os.path.join(base, parts[0]))
    if not files:
        raise ParseError(f"{list_file}: no 'file label' lines")
    missing = [p for p in files if not os.path.exists(p)]
    if missing:
        raise ParseError(f"{list_file}: {len(missing)} listed image(s) not found, first {missing[0]}")
    label_array = np.asarray(labels, dtype=np.int64)
    _check_labels(label_array, 1000, list_file)
    try:
        import cv2  # noqa: F401

        decoder = "opencv"
    except ImportError:
        decoder = "pillow"
    return Dataset(name="imagenet", split="val" if split == "test" else split, labels=label_array, source=list_file,
                   channel_order="BGR", num_classes=1000, files=files, decoder=decoder,
                   notes=[f"images resized to {IMAGENET_SIZE}×{IMAGENET_SIZE} with {decoder}, BGR"])


def _decode_imagenet(path: str, decoder: str) -> np.ndarray:
    """One image as Caffe's convert_imageset stored it: BGR, warped to 256×256 (bilinear), then float32 C×H×W."""
    if decoder == "opencv":
        import cv2

        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ParseError(f"{path}: OpenCV cannot decode this image")
        image = cv2.resize(image, (IMAGENET_SIZE, IMAGENET_SIZE), interpolation=cv2.INTER_LINEAR)
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((IMAGENET_SIZE, IMAGENET_SIZE), Image.BILINEAR)
                image = np.asarray(rgb)[:, :, ::-1]
        except (UnidentifiedImageError, OSError) as exc:
            raise ParseError(f"{path}: cannot read the image ({exc})") from None
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# scikit-learn's 8×8 digits


def _digits(split: str) -> Dataset:
    if split == "extra":
        raise NinportError("digits has no 'extra' split")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise NinportError("the digits data set ships with scikit-learn: pip install 'ninport[reproduce]'") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(labels))
    keep = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    return Dataset(name="digits", split=split, labels=labels[keep], source="sklearn.datasets.load_digits",
                   channel_order="gray", num_classes=10, class_names=[str(d) for d in range(10)],
                   array=np.ascontiguousarray(images[keep]),
                   notes=[f"fixed split: default_rng({DIGITS_SEED}) permutation, {DIGITS_TRAIN} train / "
                          f"{len(labels) - DIGITS_TRAIN} test"])


def _check_labels(labels: np.ndarray, classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ParseError(f"{where}: labels run {int(labels.min())}..{int(labels.max())}, "
                         f"outside 0..{classes - 1}")


# --------------------------------------------------------------------------------------------------------
# Caffe's transform_param


@dataclass
class Transform:
    """Caffe's ``DataTransformer`` on float images: crop, mirror, subtract the mean, multiply by ``scale``.

    As in data_transformer.cpp: TRAIN crops at a random offset, TEST at the center ((H - crop) / 2, rounded
    down); ``mirror`` flips a random half of the items in either phase; a mean image must have the input's full
    size and is subtracted at the crop's own offset; mean values are per channel (one value is repeated).
    """

    crop_size: int = 0
    mirror: bool = False
    mean: np.ndarray | None = None  # C×H×W mean image, or C (or 1) values
    scale: float = 1.0
    phase: str = "TEST"

    @classmethod
    def from_param(cls, param, phase: str = "TEST", base_dir: str | os.PathLike | None = None) -> Transform:
        """From a ``TransformationParameter`` message or the ``Net.preprocess`` dict; mean files are read here."""
        from ninport.caffe.caffemodel import read_binaryproto

        if isinstance(param, dict):
            crop, mirror = int(param.get("crop_size", 0)), bool(param.get("mirror", False))
            scale, mean_file = float(param.get("scale", 1.0)), param.get("mean_file")
            mean_value = list(param.get("mean_value", []))
        else:
            crop, mirror, scale = int(param.crop_size), bool(param.mirror), float(param.scale)
            mean_file = param.mean_file if param.HasField("mean_file") else None
            mean_value = [float(v) for v in param.mean_value]
        if mean_file and mean_value:
            raise NinportError("transform_param: mean_file and mean_value cannot both be given (Caffe refuses)")
        mean = None
        if mean_file:
            file = mean_file if base_dir is None or os.path.isabs(mean_file) else os.path.join(base_dir, mean_file)
            blob = read_binaryproto(file)
            mean = blob.reshape(blob.shape[-3:]) if blob.ndim >= 3 else blob.reshape(1, *blob.shape[-2:])
        elif mean_value:
            mean = np.asarray(mean_value, dtype=np.float32)
        return cls(crop_size=crop, mirror=mirror, mean=mean, scale=scale, phase=phase.upper())

    def output_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        c, h, w = (int(d) for d in image_shape[-3:])
        return (c, self.crop_size, self.crop_size) if self.crop_size else (c, h, w)

    def __call__(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transform a batch N×C×H×W. ``rng`` drives TRAIN crops and mirroring (a fresh default_rng if None)."""
        n, _c, h, w = images.shape
        crop = self.crop_size
        if crop and (crop > h or crop > w):
            raise NinportError(f"crop_size {crop} is larger than the {h}×{w} images")
        random_crop = crop and self.phase == "TRAIN"
        if (random_crop or self.mirror) and rng is None:
            rng = np.random.default_rng()
        out = []
        for i in range(n):
            if crop:
                top = int(rng.integers(h - crop + 1)) if random_crop else (h - crop) // 2
                left = int(rng.integers(w - crop + 1)) if random_crop else (w - crop) // 2
            else:
                top = left = 0
            flip = bool(self.mirror and rng.integers(2))
            out.append(self.crop(images[i : i + 1], top, left, flip)[0])
        return np.stack(out) if out else images[:0]

    def crop(self, images: np.ndarray, top: int, left: int, flip: bool = False) -> np.ndarray:
        """One crop of every item at (top, left), optionally mirrored, mean-subtracted and scaled."""
        _n, c, h, w = images.shape
        ch = self.crop_size or h
        cw = self.crop_size or w
        window = images[:, :, top : top + ch, left : left + cw]
        if self.mean is not None:
            mean = self.mean
            if mean.ndim == 3:
                if mean.shape[0] != c or mean.shape[1:] != (h, w):
                    raise NinportError(f"mean image is {list(mean.shape)}, the data is {c}×{h}×{w}; "
                                       "Caffe needs them equal")
                window = window - mean[None, :, top : top + ch, left : left + cw]
            else:
                if mean.size not in (1, c):
                    raise NinportError(f"{mean.size} mean values for {c}-channel data")
                window = window - mean.reshape(1, -1, 1, 1)
        if flip:
            window = window[:, :, :, ::-1]
        return np.ascontiguousarray(window * np.float32(self.scale), dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# The paper's preprocessing for CIFAR and SVHN: global contrast normalization, then ZCA whitening


def global_contrast_normalize(images: np.ndarray, scale: float = 55.0, sqrt_bias: float = 0.0,
                              use_std: bool = False, min_divisor: float = 1e-8) -> np.ndarray:
    """Each image minus its own mean, divided by its norm (or std), times ``scale``.

    The defaults are pylearn2's ``global_contrast_normalize`` as its CIFAR-10 script called it (scale 55, the
    Euclidean norm, no bias), which is how the maxout and NiN papers prepared CIFAR.
    """
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    if use_std:
        norms = np.sqrt(sqrt_bias + flat.var(axis=1, ddof=1, keepdims=True)) if flat.shape[1] > 1 else \
            np.sqrt(sqrt_bias + np.zeros((flat.shape[0], 1)))
    else:
        norms = np.sqrt(sqrt_bias + (flat**2).sum(axis=1, keepdims=True))
    norms[norms < min_divisor] = 1.0
    return (flat * (scale / norms)).reshape(images.shape).astype(np.float32)


@dataclass
class GcnZca:
    """GCN then ZCA whitening; ``fit`` on the training images, ``apply`` to any split.

    ZCA: with the training mean m and covariance C = V diag(e) Vᵀ, x ↦ (x - m) V diag(1/sqrt(e + bias)) Vᵀ.
    ``bias`` 0.1 regularizes small eigenvalues (pylearn2's ``ZCA(filter_bias=...)``).
    """

    gcn_scale: float = 55.0
    bias: float = 0.1
    mean: np.ndarray | None = None
    whitener: np.ndarray | None = None

    def fit(self, images: np.ndarray) -> GcnZca:
        x = global_contrast_normalize(images, scale=self.gcn_scale).reshape(images.shape[0], -1).astype(np.float64)
        if x.shape[0] < 2:
            raise NinportError("ZCA needs at least two training images")
        self.mean = x.mean(axis=0)
        x = x - self.mean
        n, d = x.shape
        if n >= d:
            eigenvalues, eigenvectors = np.linalg.eigh(x.T @ x / n)
            eigenvalues = np.clip(eigenvalues, 0.0, None)
            self.whitener = (eigenvectors / np.sqrt(eigenvalues + self.bias)) @ eigenvectors.T
        else:
            # Fewer images than values per image: the covariance has rank < d. Its nonzero eigenpairs come from
            # the thin SVD; on the rest of the space the eigenvalue is 0, so the scale there is 1/sqrt(bias).
            _u, singular, vt = np.linalg.svd(x, full_matrices=False)
            scales = 1.0 / np.sqrt(singular**2 / n + self.bias) - 1.0 / np.sqrt(self.bias)
            self.whitener = (vt.T * scales) @ vt + np.eye(d) / np.sqrt(self.bias)
        return self

    def apply(self, images: np.ndarray) -> np.ndarray:
        if self.mean is None or self.whitener is None:
            raise NinportError("GcnZca.apply before fit: fit it on the training split first")
        x = global_contrast_normalize(images, scale=self.gcn_scale).reshape(images.shape[0], -1).astype(np.float64)
        if x.shape[1] != self.mean.shape[0]:
            raise NinportError(f"ZCA was fitted on {self.mean.shape[0]} values per image, these have {x.shape[1]}")
        return ((x - self.mean) @ self.whitener).reshape(images.shape).astype(np.float32)
