"""``python -m bench.validate_micro [--runs R]``: the request validator, in process.

``validate_request`` on the messages of the broker's hot path, decoded from
frames as the broker gets them: a one-job ``SUBMIT`` (with ``watch``), one
whose job sets four options, a 500-job ``SUBMIT`` as ``submit_many`` sends
it, an ``ACK`` and a ``READY``. Each figure is the best of ``--runs`` timeit
repeats, in ns per message. Compare figures taken on the same machine one
after the other.
"""

from __future__ import annotations

import argparse
import functools
import timeit
from collections.abc import Sequence
from typing import Any

from protocol.framing import HEADER_SIZE, decode_body, encode_frame
from protocol.messages import validate_request

JOB: dict[str, Any] = {"task": "noop", "payload": b"\x92\x91\x01\x80"}


def _wire(message: dict[str, Any]) -> Any:
    return decode_body(encode_frame(message)[HEADER_SIZE:])


CASES: dict[str, tuple[dict[str, Any], int]] = {
    "SUBMIT, 1 job": ({"op": "SUBMIT", "rid": 7, "jobs": [JOB], "watch": True}, 100_000),
    "SUBMIT, 1 job, 4 options": (
        {
            "op": "SUBMIT",
            "rid": 7,
            "jobs": [{**JOB, "queue": "q1", "priority": 3, "max_attempts": 5, "id": "a-1"}],
            "watch": True,
        },
        100_000,
    ),
    "SUBMIT, 500 jobs": ({"op": "SUBMIT", "rid": 7, "jobs": [JOB] * 500, "watch": False}, 200),
    "ACK": ({"op": "ACK", "id": "b1f3-1a2b", "attempt": 1, "result": b"\xc0"}, 100_000),
    "READY": ({"op": "READY", "n": 4}, 100_000),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_micro")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    for name, (message, number) in CASES.items():
        decoded = _wire(message)
        best = min(
            timeit.repeat(
                functools.partial(validate_request, decoded), number=number, repeat=args.runs
            )
        )
        print(f"{name:26} {best / number * 1e9:10,.0f} ns")


if __name__ == "__main__":
    main()
