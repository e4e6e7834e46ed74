"""The upstream part of protos/caffe.proto: the superset schema with its delimited fork sections taken out."""

from __future__ import annotations

SUPERSET_OPEN = "// ===== ninport superset"
SUPERSET_CLOSE = "// ===== end of the fork"
FORK_MESSAGES_HEADER = "// ninport superset: messages of Caffe forks"


def upstream_text(text: str) -> str:
    """protos/caffe.proto without its fork sections: what must remain BVLC's schema."""
    head = text.split(FORK_MESSAGES_HEADER)[0]
    head = head[: head.rstrip().rfind("\n")]  # drop the ==== rule line above the header
    out, inside = [], False
    for line in head.splitlines():
        if SUPERSET_OPEN in line:
            assert not inside, "nested fork section"
            inside = True
        elif SUPERSET_CLOSE in line:
            assert inside, "a fork section closed twice"
            inside = False
        elif not inside:
            out.append(line)
    assert not inside, "a fork section is never closed"
    return "\n".join(out) + "\n"
