"""Coverage-guided fuzzing with atheris: ``python -m fuzz TARGET [libFuzzer flags]``.

Targets: ``decoder`` (raw bytes to the frame decoder), ``session`` (raw bytes
to a broker session), ``messages`` (the input read as a msgpack stream, each
object sent as one frame, so the fuzzer reaches the request handlers)::

    python -m fuzz messages -max_total_time=600 -seed=1

Runs until a target raises (it prints the input that did) or the time is up.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import fuzz_decoder, fuzz_session, fuzz_session_msgpack

TARGETS = {"decoder": fuzz_decoder, "session": fuzz_session, "messages": fuzz_session_msgpack}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: python -m fuzz {'|'.join(TARGETS)} [libFuzzer flags]", file=sys.stderr)
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
