"""Fixed-seed fuzzing in the suite: the decoder and the broker's sessions on hostile input.

The same targets run coverage-guided and for as long as you like with
``python -m fuzz TARGET -max_total_time=600`` (see the README).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fuzz.targets import fuzz_decoder, fuzz_session, fuzz_session_messages
from harness.processes import ROOT
from protocol.framing import FrameDecoder
from protocol.messages import REQUESTS, Role

# A short run in the suite (a long one: ``python -m fuzz TARGET -max_total_time=600``).
ATHERIS_RUNS = 2000

FIXED = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
field_names = sorted({name for schema in REQUESTS.values() for name in schema} | {"op", "rid"})


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Messages with a real op and a mix of real and wrong fields: they reach the handlers."""
    op = draw(st.sampled_from(sorted(REQUESTS)))
    message: dict[str, Any] = {"op": op, "rid": draw(st.integers(0, 3))}
    for name in draw(st.lists(st.sampled_from(field_names), max_size=6)):
        message[name] = draw(values)
    if draw(st.booleans()):
        message["jobs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"task": st.sampled_from(["a", "b"]), "payload": st.binary(max_size=8)},
                    optional={
                        "queue": st.sampled_from(["default", "other"]),
                        "priority": st.integers(-3, 3),
                        "delay": st.floats(0, 1),
                        "id": st.sampled_from(["x", "y"]),
                        "max_attempts": st.integers(0, 3),
                    },
                ),
                max_size=4,
            )
        )
    if draw(st.booleans()):
        message["n"] = draw(st.integers(0, 5))
    return message


@seed(20261126)
@FIXED
@given(st.binary(max_size=300))
def test_decoder_survives_any_bytes(data: bytes) -> None:
    fuzz_decoder(data)


@seed(20261126)
@FIXED
@given(st.binary(max_size=300))
def test_session_survives_any_bytes(data: bytes) -> None:
    fuzz_session(data)


@seed(20261126)
@settings(FIXED, max_examples=300)  # a whole session per example: the suite's slowest property
@given(st.sampled_from([None, Role.CLIENT, Role.WORKER]), st.lists(requests() | values, max_size=8))
def test_session_survives_any_messages(role: str | None, messages: list[Any]) -> None:
    written = fuzz_session_messages(role, messages)
    # Whatever it was sent, the broker answered in well-formed frames.
    decoder = FrameDecoder(max_frame=1024 * 1024)
    replies = decoder.feed(written)
    assert decoder.buffered == 0
    assert replies[0]["op"] == "WELCOME"


@pytest.mark.parametrize("target", ["decoder", "messages"])
def test_coverage_guided_fuzzing_finds_nothing_in_a_short_fixed_seed_run(target: str) -> None:
    pytest.importorskip("atheris")
    run = subprocess.run(
        [sys.executable, "-m", "fuzz", target, f"-runs={ATHERIS_RUNS}", "-seed=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"Done {ATHERIS_RUNS} runs" in run.stderr
