"""Coverage-guided fuzzing of the ingest and control decoders with atheris (optional: not in CI's deps).

    python tests/atheris_wire.py -runs=100000 -artifact_prefix=/tmp/ NEW_DIR tests/fuzz_corpus/wire

libFuzzer writes new inputs into the first directory only, so pass a scratch one first; seeds from
tests/fuzz_corpus/wire are msgpack lists of parts. A crash is any exception but WireError, or a
reason outside REJECT_REASONS; atheris saves the input under -artifact_prefix.
"""

from __future__ import annotations

import sys

import atheris
import msgpack

with atheris.instrument_imports(include=["sage_runtime.wire"]):
    from sage_runtime.wire import REJECT_REASONS, WireError, decode_ingest, decode_request


def parts_of(data: bytes) -> list[bytes]:
    """Seeds (msgpack lists of bytes) keep their structure; anything else is split on b'|'."""
    try:
        parts = msgpack.unpackb(data)
        if isinstance(parts, list) and all(isinstance(p, bytes) for p in parts):
            return parts
    except Exception:  # noqa: BLE001 - mutated seeds are mostly not msgpack any more
        pass
    return data.split(b"|", 4)


def one_input(data: bytes) -> None:
    for decode in (lambda: decode_ingest(parts_of(data), max_elements=1 << 12), lambda: decode_request(data)):
        try:
            decode()
        except WireError as exc:
            if exc.reason not in REJECT_REASONS:
                raise AssertionError(f"reason {exc.reason!r} is not in REJECT_REASONS") from None


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
