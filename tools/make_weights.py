"""Write seeded weights for any prototxt as a caffemodel, in Caffe's current (v2) or legacy (v1) layout.

    python tools/make_weights.py reference/nin_imagenet/train_val.prototxt -o nin_seeded.caffemodel --layout v1
"""

from __future__ import annotations

import argparse
import sys

from ninport.caffe import read_net
from ninport.caffe.seeded import write_seeded_caffemodel
from ninport.errors import NinportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prototxt")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--layout", choices=["v1", "v2"], default="v2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", default="TEST")
    args = parser.parse_args(argv)
    try:
        net = read_net(args.prototxt, phase=args.phase)
        write_seeded_caffemodel(net, args.output, layout=args.layout, seed=args.seed)
    except NinportError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.layout} layout, seed {args.seed}, {net.param_count():,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
