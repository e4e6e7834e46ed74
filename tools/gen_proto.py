"""Regenerate ninport/caffe/caffe_pb2.py from protos/caffe.proto with grpc_tools' bundled protoc.
Run ``python tools/gen_proto.py`` after editing the schema; tests check the committed file is up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
PROTO_FILE = PROTO_DIR / "caffe.proto"
DEFAULT_OUT_DIR = REPO_ROOT / "ninport" / "caffe"


def _bundled_include_dir() -> Path:
    """The well-known .proto files shipped inside grpc_tools (grpc_tools/_proto)."""
    return Path(protoc.__file__).resolve().parent / "_proto"


def generate(out_dir: Path) -> Path:
    """Write caffe_pb2.py for protos/caffe.proto into out_dir and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{_bundled_include_dir()}",
        f"--python_out={out_dir}",
        str(PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status} on {PROTO_FILE}")
    out = out_dir / "caffe_pb2.py"
    if not out.is_file():
        raise RuntimeError(f"protoc reported success but did not write {out}")
    return out


def main() -> int:
    out = generate(DEFAULT_OUT_DIR)
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
