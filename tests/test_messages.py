"""Unit tests for the message schema (``protocol.messages``) and ``protocol.errors``."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as messages_module
from protocol.errors import (
    RETRYABLE_REFUSALS,
    ConnectionLost,
    ErrorCode,
    JobwireError,
    NotFound,
    NotLeader,
    ProtocolError,
    QueueFull,
    RemoteError,
    remote_error,
)
from protocol.framing import HEADER_SIZE, decode_body, encode_frame
from protocol.messages import (
    DELIVERY,
    ERROR_INFO,
    JOB_SPEC,
    MAX_ID_LENGTH,
    MAX_LIST_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PROGRESS_INFO,
    MAX_SECONDS,
    MAX_TASK_ATTEMPTS,
    MAX_TEXT_LENGTH,
    MAX_UINT,
    PUSHES,
    REQUESTS,
    SCHEDULE_SPEC,
    Field,
    Kind,
    Op,
    request_id,
    validate_push,
    validate_request,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Schema = dict[str, Field]
Validator = Any  # validate_request or validate_push

TABLES: list[tuple[str, dict[str, Schema], Validator]] = [
    ("request", REQUESTS, validate_request),
    ("push", PUSHES, validate_push),
]


def check(validator: Validator, message: Any, code: ErrorCode) -> str:
    """Validate ``message``, expecting a ProtocolError with ``code``; return its message."""
    with pytest.raises(ProtocolError) as info:
        validator(message)
    assert info.value.code is code, info.value
    assert str(info.value) == f"{code}: {info.value.message}"
    return info.value.message


# --- minimal valid values, built from the schema tables ----------------------------

GOOD: dict[Kind, Any] = {
    Kind.STR: "s",
    Kind.NAME: "name",
    Kind.ID: "job-1",
    Kind.TEXT: "some text",
    Kind.INT: -5,
    Kind.UINT: 3,
    Kind.SECONDS: 1.5,
    Kind.FRACTION: 0.25,
    Kind.PROGRESS_INFO: b"\x81\xa4rows\xcd\x0f\xa0",
    Kind.BOOL: True,
    Kind.BIN: b"\x93\x01\x02\x03",
    Kind.NAMES: ["default", "high"],
    Kind.IDS: ["a", "b"],
    Kind.MAP: {"task": ["x"]},
    Kind.ANY: [1, "two", None],
    Kind.TASK_DEFAULTS: {"resize": {"max_attempts": 5, "lease": 120}, "mail": {}},
}


def minimal(schema: Schema, *, everything: bool = False) -> dict[str, Any]:
    """A valid map for ``schema``: its required fields (or all fields)."""
    return {
        name: good_value(field.kind)
        for name, field in schema.items()
        if field.required or everything
    }


def good_value(kind: Kind) -> Any:
    if kind is Kind.JOB_SPECS:
        return [minimal(JOB_SPEC), minimal(JOB_SPEC, everything=True)]
    if kind is Kind.DELIVERIES:
        return [minimal(DELIVERY), minimal(DELIVERY, everything=True)]
    if kind is Kind.SCHEDULES:
        return [minimal(SCHEDULE_SPEC), minimal(SCHEDULE_SPEC, everything=True)]
    if kind is Kind.ERROR:
        return minimal(ERROR_INFO, everything=True)
    return GOOD[kind]


def message_for(table: dict[str, Schema], op: str, *, everything: bool = False) -> dict[str, Any]:
    return {"op": op, **minimal(table[op], everything=everything)}


ALL_OPS = [(what, op) for what, table, _ in TABLES for op in table]
ALL_FIELDS = [
    (what, op, name, field)
    for what, table, _ in TABLES
    for op, schema in table.items()
    for name, field in schema.items()
]
REQUIRED_FIELDS = [case for case in ALL_FIELDS if case[3].required]
OPTIONAL_FIELDS = [case for case in ALL_FIELDS if not case[3].required]
NESTED = [
    ("request", Op.SUBMIT, "jobs", JOB_SPEC),
    ("push", Op.JOBS, "jobs", DELIVERY),
    ("request", Op.FAIL, "error", ERROR_INFO),
    ("push", Op.DONE, "error", ERROR_INFO),
]


def table_of(what: str) -> tuple[dict[str, Schema], Validator]:
    for name, table, validator in TABLES:
        if name == what:
            return table, validator
    raise AssertionError(what)


def param_id(value: Any) -> str | None:
    if isinstance(value, Field):
        return None
    text = value if isinstance(value, str) and value.isidentifier() else repr(value)
    return text if len(text) < 20 else text[:17] + "..."


# --- the tables themselves ------------------------------------------------------------


def test_request_and_push_ops_are_disjoint_and_complete() -> None:
    assert not set(REQUESTS) & set(PUSHES)
    ops = {v for k, v in vars(Op).items() if not k.startswith("_")}
    assert ops == set(REQUESTS) | set(PUSHES)


def test_every_request_with_reply_requires_rid() -> None:
    notifications = {Op.READY, Op.ACK, Op.FAIL, Op.RELEASE, Op.HEARTBEAT, Op.QUIET, Op.PROGRESS}
    for op, schema in REQUESTS.items():
        if op in notifications:
            assert "rid" not in schema, op
        else:
            assert schema["rid"].kind is Kind.UINT and schema["rid"].required, op


# --- valid messages -----------------------------------------------------------------


@pytest.mark.parametrize(("what", "op"), ALL_OPS)
@pytest.mark.parametrize("everything", [False, True])
def test_minimal_and_full_messages_validate(what: str, op: str, everything: bool) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=everything)
    assert validator(message) == op
    # and they survive the wire unchanged
    assert validator(decode_body(encode_frame(message)[HEADER_SIZE:])) == op


@pytest.mark.parametrize(("what", "op"), ALL_OPS)
def test_ops_of_the_other_direction_are_unknown(what: str, op: str) -> None:
    table, _ = table_of(what)
    _, other = table_of("push" if what == "request" else "request")
    text = check(other, message_for(table, op), ErrorCode.UNKNOWN_OP)
    assert repr(op) in text


@pytest.mark.parametrize(("what", "op", "name", "field"), OPTIONAL_FIELDS, ids=param_id)
def test_nil_accepted_for_optional_field(what: str, op: str, name: str, field: Field) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    message[name] = None
    assert validator(message) == op


@pytest.mark.parametrize(("what", "op", "name", "schema"), NESTED)
def test_nil_accepted_for_optional_nested_field(
    what: str, op: str, name: str, schema: Schema
) -> None:
    table, validator = table_of(what)
    for key, field in schema.items():
        if field.required:
            continue
        message = message_for(table, op)
        inner = minimal(schema, everything=True)
        inner[key] = None
        message[name] = inner if name == "error" else [inner]
        assert validator(message) == op


def test_realistic_messages() -> None:
    assert (
        validate_request(
            {
                "op": "HELLO",
                "rid": 0,
                "version": 1,
                "role": "worker",
                "name": "",
                "queues": [],
                "burst": False,
                "tasks": {},
                "auth": b"",
            }
        )
        == "HELLO"
    )
    assert validate_request({"op": "SUBMIT", "rid": 1, "jobs": []}) == "SUBMIT"
    assert validate_request({"op": "HEARTBEAT", "ids": []}) == "HEARTBEAT"
    assert validate_request({"op": "QUIET"}) == "QUIET"
    assert validate_request({"op": "RETRY", "rid": 2}) == "RETRY"
    assert validate_push({"op": "ERR", "code": "INTERNAL", "message": ""}) == "ERR"
    assert validate_push({"op": "EMPTY"}) == "EMPTY"


# --- missing and nil required fields -----------------------------------------------


@pytest.mark.parametrize(("what", "op", "name", "field"), REQUIRED_FIELDS, ids=param_id)
def test_missing_required_field(what: str, op: str, name: str, field: Field) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    del message[name]
    text = check(validator, message, ErrorCode.BAD_REQUEST)
    assert text == f"{op}: missing required field {name!r}"


@pytest.mark.parametrize(("what", "op", "name", "field"), REQUIRED_FIELDS, ids=param_id)
def test_nil_required_field(what: str, op: str, name: str, field: Field) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    message[name] = None
    text = check(validator, message, ErrorCode.BAD_REQUEST)
    assert text.startswith(f"{op}.{name}: ")
    assert "nil" in text


@pytest.mark.parametrize(("what", "op", "name", "schema"), NESTED)
def test_missing_required_nested_field_names_the_path(
    what: str, op: str, name: str, schema: Schema
) -> None:
    table, validator = table_of(what)
    for key, field in schema.items():
        if not field.required:
            continue
        inner = minimal(schema, everything=True)
        del inner[key]
        message = message_for(table, op)
        if name == "error":
            message[name] = inner
            where = f"{op}.{name}"
        else:
            # the broken element is the third one: the index must be right
            message[name] = [minimal(schema), minimal(schema), inner]
            where = f"{op}.{name}[2]"
        text = check(validator, message, ErrorCode.BAD_REQUEST)
        assert text == f"{where}: missing required field {key!r}"
        # nil for the same field: the message names the full dotted path
        inner[key] = None
        text = check(validator, message, ErrorCode.BAD_REQUEST)
        assert text.startswith(f"{where}.{key}: ")


def test_submit_job_without_task() -> None:
    job: dict[str, Any] = {"payload": b""}
    message = {"op": "SUBMIT", "rid": 1, "jobs": [job]}
    text = check(validate_request, message, ErrorCode.BAD_REQUEST)
    assert "SUBMIT.jobs[0]" in text and "'task'" in text
    job["task"] = 5
    text = check(validate_request, message, ErrorCode.BAD_REQUEST)
    assert text == "SUBMIT.jobs[0].task: expected string, got int"


# --- wrong types and out-of-range values, for every field of every kind ---------------

BAD: dict[Kind, list[Any]] = {
    Kind.UINT: [True, False, -1, MAX_UINT + 1, 2**64 - 1, 1.0, "1", b"\x01", [1], {}],
    Kind.INT: [True, False, -MAX_UINT - 1, -(2**63), MAX_UINT + 1, 1.5, "1", [], {}],
    Kind.SECONDS: [
        True,
        False,
        -1,
        -0.001,
        math.nan,
        -math.nan,
        math.inf,
        -math.inf,
        MAX_SECONDS + 1,
        int(MAX_SECONDS) + 1,
        "1",
        b"1",
        [1],
        {},
    ],
    Kind.FRACTION: [True, -0.001, 1.001, 2, math.nan, math.inf, "0.5", b"1", [0.5], {}],
    Kind.PROGRESS_INFO: [b"x" * (MAX_PROGRESS_INFO + 1), "text", bytearray(b"x"), 0, {}],
    Kind.BOOL: [0, 1, 1.0, "true", b"\x01", [], {}],
    Kind.BIN: ["text", bytearray(b"x"), [1, 2], 0, True, {}, 1.0],
    Kind.NAME: ["", "n" * (MAX_NAME_LENGTH + 1), b"name", 1, True, ["a"], {}],
    Kind.ID: ["", "i" * (MAX_ID_LENGTH + 1), b"id", 7, False, ["a"], {}],
    Kind.TEXT: ["t" * (MAX_TEXT_LENGTH + 1), b"text", 1, True, [], {}],
    Kind.NAMES: ["default", b"q", {"a": 1}, [""], ["n" * 201], [1], [b"q"], [None], 3],
    Kind.IDS: ["id", b"i", {"a": 1}, [""], ["i" * 201], [1], ["ok", True], [None], 3],
    Kind.MAP: [[], "m", b"m", 1, True, [("a", 1)]],
    Kind.TASK_DEFAULTS: [
        [],
        "m",
        b"m",
        1,
        [("t", {})],
        {1: {}},
        {b"t": {}},
        {"": {}},
        {"n" * (MAX_NAME_LENGTH + 1): {}},
        {"t": None},
        {"t": 1},
        {"t": [("max_attempts", 2)]},
        {"t": {"max_attempts": 0}},
        {"t": {"max_attempts": MAX_TASK_ATTEMPTS + 1}},
        {"t": {"max_attempts": -1}},
        {"t": {"max_attempts": True}},
        {"t": {"max_attempts": 2.0}},
        {"t": {"max_attempts": "3"}},
        {"t": {"lease": 0}},
        {"t": {"lease": 0.0}},
        {"t": {"lease": -5.0}},
        {"t": {"lease": True}},
        {"t": {"lease": "10"}},
        {"t": {"lease": math.nan}},
        {"t": {"lease": math.inf}},
        {"t": {"lease": MAX_SECONDS + 1}},
        {"t": {"lease": int(MAX_SECONDS) + 1}},
        {"good": {"max_attempts": 2}, "bad": {"lease": -1}},
    ],
    Kind.ERROR: [
        {},
        {"type": "E"},
        {"message": "m"},
        {"type": "E", "message": "m", "extra": 1},
        {"type": 1, "message": "m"},
        {"type": "E", "message": "m", "traceback": b"tb"},
        "error",
        ["E", "m"],
        1,
    ],
    Kind.JOB_SPECS: [
        {},
        "jobs",
        [1],
        [{}],
        [None],
        [{"task": "t"}],
        [{"task": "t", "payload": b"", "bogus": 1}],
        [{"task": "t", "payload": b"", "delay": -1}],
        [{"task": "t", "payload": b"", "priority": True}],
    ],
    Kind.DELIVERIES: [
        {},
        "jobs",
        [1],
        [{}],
        [{**minimal(DELIVERY), "attempt": -1}],
        [{**minimal(DELIVERY), "lease": math.nan}],
        [{**minimal(DELIVERY), "bogus": 1}],
    ],
    Kind.SCHEDULES: [
        {},
        "beat",
        [1],
        [{}],
        [{"name": "beat"}],
        [{**minimal(SCHEDULE_SPEC), "every": -1}],
        [{**minimal(SCHEDULE_SPEC), "payload": "args"}],
        [{**minimal(SCHEDULE_SPEC), "bogus": 1}],
    ],
}
WRONG_CASES = [(*case, bad) for case in ALL_FIELDS for bad in BAD.get(case[3].kind, [])]


@pytest.mark.parametrize(("what", "op", "name", "field", "bad"), WRONG_CASES, ids=param_id)
def test_wrong_value_rejected_naming_field(
    what: str, op: str, name: str, field: Field, bad: Any
) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    message[name] = bad
    text = check(validator, message, ErrorCode.BAD_REQUEST)
    assert text.startswith(f"{op}.{name}"), text


def test_kinds_all_covered_by_good_and_bad_tables() -> None:
    used = {field.kind for _, _, _, field in ALL_FIELDS}
    used |= {f.kind for schema in (JOB_SPEC, DELIVERY, ERROR_INFO) for f in schema.values()}
    assert used - {Kind.ANY, Kind.STR} <= set(BAD)
    for kind in used:
        assert good_value(kind) is not None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"op": "PING", "rid": True}, "PING.rid: expected unsigned integer, got bool"),
        ({"op": "PING", "rid": -1}, "PING.rid: expected unsigned integer, got -1"),
        ({"op": "PING", "rid": 1.0}, "PING.rid: expected unsigned integer, got float"),
        ({"op": "PING", "rid": None}, "PING.rid: expected unsigned integer, got nil"),
        ({"op": "STATUS", "rid": 1, "id": b"x"}, "STATUS.id: expected string, got bytes"),
        ({"op": "STATUS", "rid": 1, "id": ""}, "STATUS.id: must not be empty"),
        (
            {"op": "ACK", "id": "j", "attempt": 1, "result": "r"},
            "ACK.result: expected binary, got str",
        ),
        ({"op": "WATCH", "rid": 1, "ids": ["a", 2]}, "WATCH.ids[1]: expected string, got int"),
        (
            {"op": "HELLO", "rid": 1, "version": 1, "role": "r", "burst": 1},
            "HELLO.burst: expected boolean, got int",
        ),
        (
            {"op": "HELLO", "rid": 1, "version": 1, "role": "r", "task_names": ["ok", 2]},
            "HELLO.task_names[1]: expected string, got int",
        ),
        (
            {"op": "HELLO", "rid": 1, "version": 1, "role": "r", "task_names": "resize"},
            "HELLO.task_names: expected array, got str",
        ),
        (
            {"op": "FAIL", "id": "j", "attempt": 1, "error": {"type": "E"}},
            "FAIL.error: missing required field 'message'",
        ),
        (
            {
                "op": "FAIL",
                "id": "j",
                "attempt": 1,
                "error": good_value(Kind.ERROR),
                "retry_in": math.inf,
            },
            "FAIL.retry_in: expected a number of seconds in 0..315360000",
        ),
    ],
)
def test_exact_error_messages(message: dict[str, Any], expected: str) -> None:
    assert check(validate_request, message, ErrorCode.BAD_REQUEST) == expected


# --- HELLO.tasks: the task-defaults map ------------------------------------------

HELLO_WORKER: dict[str, Any] = {"op": "HELLO", "rid": 1, "version": 1, "role": "worker"}
TASKS_AT = "HELLO.tasks['resize']"


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ([], "HELLO.tasks: expected map, got list"),
        ({1: {}}, "HELLO.tasks[1]: task name: expected string, got int"),
        ({b"t": {}}, "HELLO.tasks[b't']: task name: expected string, got bytes"),
        ({"": {}}, "HELLO.tasks['']: task name: must not be empty"),
        ({"t": None}, "HELLO.tasks['t']: expected map, got nil"),
        ({"t": [1]}, "HELLO.tasks['t']: expected map, got list"),
        (
            {"resize": {"max_attempts": 0}},
            f"{TASKS_AT}.max_attempts: expected an integer in 1..1000000, got 0",
        ),
        (
            {"resize": {"max_attempts": 1_000_001}},
            f"{TASKS_AT}.max_attempts: expected an integer in 1..1000000, got 1000001",
        ),
        (
            {"resize": {"max_attempts": True}},
            f"{TASKS_AT}.max_attempts: expected an integer in 1..1000000, got bool",
        ),
        (
            {"resize": {"max_attempts": 10**5000}},
            f"{TASKS_AT}.max_attempts: expected an integer in 1..1000000, "
            "got an integer too large to show",
        ),
        (
            {"resize": {"lease": -1}},
            f"{TASKS_AT}.lease: expected a positive number of seconds up to 315360000, got -1",
        ),
        (
            {"resize": {"lease": 0.0}},
            f"{TASKS_AT}.lease: expected a positive number of seconds up to 315360000, got 0.0",
        ),
        (
            {"resize": {"lease": math.nan}},
            f"{TASKS_AT}.lease: expected a positive number of seconds up to 315360000, got nan",
        ),
        (
            {"resize": {"lease": "10"}},
            f"{TASKS_AT}.lease: expected a positive number of seconds up to 315360000, got str",
        ),
        (
            {"ok": {"max_attempts": 2}, "resize": {"lease": math.inf}},
            f"{TASKS_AT}.lease: expected a positive number of seconds up to 315360000, got inf",
        ),
    ],
)
def test_task_defaults_errors_name_the_field(tasks: Any, expected: str) -> None:
    message = {**HELLO_WORKER, "tasks": tasks}
    assert check(validate_request, message, ErrorCode.BAD_REQUEST) == expected


@pytest.mark.parametrize(
    ("tasks", "problem"),
    [
        ({"x" * MAX_NAME_LENGTH: {"lease": -1}}, ".lease: expected a positive number"),
        ({"x" * 100_000: {}}, ": task name: string longer than 200 characters"),
    ],
)
def test_task_defaults_errors_clip_the_task_name(tasks: dict[str, Any], problem: str) -> None:
    text = check(validate_request, {**HELLO_WORKER, "tasks": tasks}, ErrorCode.BAD_REQUEST)
    assert text.startswith("HELLO.tasks['" + "x" * 76 + "...]" + problem), text
    assert len(text) < 200


def _announcement_ok(tasks: Any) -> bool:
    """The rules for HELLO.tasks, restated plainly (as the manager used to check them)."""
    if tasks is None:
        return True  # nil is absent, like any optional field
    if not isinstance(tasks, dict) or len(tasks) > MAX_LIST_LENGTH:
        return False
    for name, defaults in tasks.items():
        if type(name) is not str or not 1 <= len(name) <= MAX_NAME_LENGTH:
            return False
        if not isinstance(defaults, dict):
            return False
        attempts = defaults.get("max_attempts")
        if attempts is not None and (
            type(attempts) is not int or not 1 <= attempts <= MAX_TASK_ATTEMPTS
        ):
            return False
        lease = defaults.get("lease")
        if lease is not None and (type(lease) not in (int, float) or not 0 < lease <= MAX_SECONDS):
            return False
    return True


_TASK_FIELD_VALUES = st.one_of(
    st.sampled_from(
        [0, 1, -1, 0.5, 5e-324, MAX_TASK_ATTEMPTS, MAX_TASK_ATTEMPTS + 1, MAX_SECONDS,
         MAX_SECONDS + 1, math.nan, math.inf, True, "3", None, 10**30]
    ),
    st.integers(),
    st.floats(),
)  # fmt: skip


@st.composite
def near_valid_task_maps(draw: st.DrawFn) -> Any:
    """A valid HELLO.tasks map, maybe with one entry, key or field made odd."""
    tasks: dict[Any, Any] = draw(_SIMPLE_VALID[Kind.TASK_DEFAULTS])
    how = draw(st.sampled_from(["none", "field", "entry", "key", "whole"]))
    if how == "field" and tasks:
        name = draw(st.sampled_from(sorted(tasks)))
        field = draw(st.sampled_from(["max_attempts", "lease", "other"]))
        tasks[name] = {**tasks[name], field: draw(_TASK_FIELD_VALUES)}
    elif how == "entry" and tasks:
        tasks[draw(st.sampled_from(sorted(tasks)))] = draw(arbitrary)
    elif how == "key":
        key = draw(st.one_of(st.text(max_size=3), st.binary(max_size=3), st.integers()))
        tasks[key] = {}
    elif how == "whole":
        return draw(arbitrary)
    return tasks


@settings(FAST, max_examples=500)
@given(tasks=near_valid_task_maps())
def test_task_defaults_fast_and_detailed_checks_agree(tasks: Any) -> None:
    message = {**HELLO_WORKER, "tasks": tasks}
    fast = messages_module._COMPILED_REQUESTS[Op.HELLO](message)
    try:
        messages_module._check_map(Op.HELLO, messages_module._REQUESTS_WITH_OP[Op.HELLO], message)
        detailed = True
    except ProtocolError as exc:
        detailed = False
        assert exc.message.startswith("HELLO.tasks"), exc.message
    assert fast == detailed == _announcement_ok(tasks)


# --- boundaries that must be accepted ---------------------------------------------

EDGE_GOOD: dict[Kind, list[Any]] = {
    Kind.UINT: [0, MAX_UINT],
    Kind.INT: [0, -MAX_UINT, MAX_UINT],
    Kind.SECONDS: [0, 0.0, -0.0, 5e-324, MAX_SECONDS, int(MAX_SECONDS)],
    Kind.FRACTION: [0, 1, 0.0, 1.0, -0.0],
    Kind.PROGRESS_INFO: [b"", b"\x00" * MAX_PROGRESS_INFO],
    Kind.NAME: ["n", "n" * MAX_NAME_LENGTH, "é" * MAX_NAME_LENGTH, "\x00"],
    Kind.ID: ["i", "i" * MAX_ID_LENGTH, "😀" * MAX_ID_LENGTH],
    Kind.TEXT: ["", "t" * MAX_TEXT_LENGTH],
    Kind.BIN: [b"", b"\x00" * 1000],
    Kind.NAMES: [[], ["n" * MAX_NAME_LENGTH] * 3],
    Kind.IDS: [[], ["i" * MAX_ID_LENGTH] * 3],
    Kind.MAP: [{}, {"a": {"b": [None]}}, {b"k": 1}],
    Kind.BOOL: [False, True],
    Kind.TASK_DEFAULTS: [
        {},
        {"t": {}},
        {"t": {"max_attempts": 1, "lease": 5e-324}},
        {"t": {"max_attempts": MAX_TASK_ATTEMPTS, "lease": MAX_SECONDS}},
        {"t": {"lease": int(MAX_SECONDS)}},
        {"t": {"max_attempts": None, "lease": None}},
        # Other keys of an entry are ignored, so later workers can announce more.
        {"t": {"timeout": "later", 7: [1]}},
        {"n" * MAX_NAME_LENGTH: {"lease": 1}, "\x00": {}},
    ],
}
EDGE_CASES = [(*case, good) for case in ALL_FIELDS for good in EDGE_GOOD.get(case[3].kind, [])]


@pytest.mark.parametrize(("what", "op", "name", "field", "good"), EDGE_CASES, ids=param_id)
def test_boundary_value_accepted(what: str, op: str, name: str, field: Field, good: Any) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    message[name] = good
    assert validator(message) == op


def test_list_length_limit() -> None:
    ids = ["x"] * MAX_LIST_LENGTH
    assert validate_request({"op": "HEARTBEAT", "ids": ids}) == "HEARTBEAT"
    text = check(validate_request, {"op": "HEARTBEAT", "ids": [*ids, "x"]}, ErrorCode.BAD_REQUEST)
    assert text == f"HEARTBEAT.ids: array longer than {MAX_LIST_LENGTH}"
    jobs = [minimal(JOB_SPEC)] * (MAX_LIST_LENGTH + 1)
    text = check(validate_request, {"op": "SUBMIT", "rid": 1, "jobs": jobs}, ErrorCode.BAD_REQUEST)
    assert text.startswith("SUBMIT.jobs: array longer")


# --- unknown fields, unknown ops, non-maps ----------------------------------------------


@pytest.mark.parametrize(("what", "op"), ALL_OPS)
def test_unknown_field_rejected_except_in_ok(what: str, op: str) -> None:
    table, validator = table_of(what)
    message = message_for(table, op, everything=True)
    message["bogus"] = 1
    if op == Op.OK:
        assert validator(message) == op
        return
    text = check(validator, message, ErrorCode.BAD_REQUEST)
    assert text == f"{op}: unknown field 'bogus'"


@pytest.mark.parametrize("key", [1, b"rid", None, True, 1.5])
def test_non_string_keys_are_unknown_fields(key: Any) -> None:
    text = check(validate_request, {"op": "PING", "rid": 1, key: 0}, ErrorCode.BAD_REQUEST)
    assert text == f"PING: unknown field {key!r}"


def test_container_keys_are_named_by_type_not_echoed() -> None:
    text = check(validate_request, {"op": "PING", "rid": 1, ("t",): 0}, ErrorCode.BAD_REQUEST)
    assert text == "PING: unknown field tuple"


def test_unknown_nested_field_rejected() -> None:
    job = {**minimal(JOB_SPEC), "retries": 3}
    message = {"op": "SUBMIT", "rid": 1, "jobs": [minimal(JOB_SPEC), job]}
    text = check(validate_request, message, ErrorCode.BAD_REQUEST)
    assert text == "SUBMIT.jobs[1]: unknown field 'retries'"


def test_ok_reply_accepts_extra_fields_but_still_checks_rid() -> None:
    extra = {"job": {"state": "done", "x": [1, b"2", None]}, "ids": ["a"], "n": -1, "rid2": True}
    assert validate_push({"op": "OK", "rid": 5, **extra}) == "OK"
    assert validate_push({"op": "OK", "rid": 5, "id": 12}) == "OK"  # not checked against ids
    check(validate_push, {"op": "OK", **extra}, ErrorCode.BAD_REQUEST)
    check(validate_push, {"op": "OK", "rid": -1, **extra}, ErrorCode.BAD_REQUEST)
    check(validate_push, {"op": "OK", "rid": True}, ErrorCode.BAD_REQUEST)


def test_err_reply_is_closed() -> None:
    base = {"op": "ERR", "code": "NOT_FOUND", "message": "no such job"}
    assert validate_push(base) == "ERR"
    assert validate_push({**base, "rid": None}) == "ERR"
    assert validate_push({**base, "rid": 9}) == "ERR"
    text = check(validate_push, {**base, "rid": 9, "detail": "x"}, ErrorCode.BAD_REQUEST)
    assert text == "ERR: unknown field 'detail'"
    check(validate_push, {**base, "rid": -9}, ErrorCode.BAD_REQUEST)
    check(validate_push, {**base, "code": ""}, ErrorCode.BAD_REQUEST)


@pytest.mark.parametrize("op", ["NOPE", "", "ping", "Ping", "PING ", "OK\x00", "x" * 10_000])
def test_unknown_op(op: str) -> None:
    for validator in (validate_request, validate_push):
        text = check(validator, {"op": op, "rid": 1}, ErrorCode.UNKNOWN_OP)
        assert text == f"unknown op {op[:MAX_NAME_LENGTH]!r}"
        assert len(text) < MAX_NAME_LENGTH + 20  # a huge op is not echoed back whole


@pytest.mark.parametrize("op", [None, 1, True, b"PING", ["PING"], {"PING": 1}, 1.0])
def test_op_must_be_a_string(op: Any) -> None:
    text = check(validate_request, {"op": op, "rid": 1}, ErrorCode.BAD_REQUEST)
    assert text == "request: missing string field 'op'"
    text = check(validate_push, {"op": op}, ErrorCode.BAD_REQUEST)
    assert text == "message: missing string field 'op'"


def test_missing_op() -> None:
    assert "'op'" in check(validate_request, {"rid": 1}, ErrorCode.BAD_REQUEST)
    assert "'op'" in check(validate_push, {}, ErrorCode.BAD_REQUEST)
    # a bytes key spelling "op" is not the op field
    assert "'op'" in check(validate_request, {b"op": "PING", "rid": 1}, ErrorCode.BAD_REQUEST)


class DictSubclass(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    ("message", "type_name"),
    [
        (None, "nil"),
        ([], "list"),
        ([("op", "PING"), ("rid", 1)], "list"),
        ("PING", "str"),
        (b"\x81", "bytes"),
        (1, "int"),
        (True, "bool"),
        (1.5, "float"),
        (DictSubclass(op="PING", rid=1), "DictSubclass"),
    ],
)
def test_non_map_message(message: Any, type_name: str) -> None:
    text = check(validate_request, message, ErrorCode.BAD_REQUEST)
    assert text == f"request: expected a map, got {type_name}"
    text = check(validate_push, message, ErrorCode.BAD_REQUEST)
    assert text == f"message: expected a map, got {type_name}"


# --- request_id -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"op": "PING", "rid": 0}, 0),
        ({"op": "PING", "rid": 42}, 42),
        ({"op": "PING", "rid": MAX_UINT}, MAX_UINT),
        ({"op": "NOPE", "rid": 7, "junk": b""}, 7),  # usable even when the rest is bad
        ({"rid": 3}, 3),
        ({"op": "PING", "rid": MAX_UINT + 1}, None),
        ({"op": "PING", "rid": -1}, None),
        ({"op": "PING", "rid": True}, None),
        ({"op": "PING", "rid": False}, None),
        ({"op": "PING", "rid": 1.0}, None),
        ({"op": "PING", "rid": "1"}, None),
        ({"op": "PING", "rid": None}, None),
        ({"op": "PING"}, None),
        ({b"rid": 1}, None),
        ([("rid", 1)], None),
        (None, None),
        (1, None),
        (DictSubclass(rid=1), None),
    ],
)
def test_request_id(message: Any, expected: int | None) -> None:
    rid = request_id(message)
    assert rid == expected
    assert type(rid) is type(expected)


# --- errors module -------------------------------------------------------------------


def test_error_codes_are_stable_strings() -> None:
    for code in ErrorCode:
        assert code.value == code.name
        assert code == code.name  # a StrEnum compares equal to its wire string
        assert ErrorCode(code.name) is code
    assert {c.value for c in ErrorCode} >= {
        "BAD_FRAME",
        "FRAME_TOO_LARGE",
        "BAD_REQUEST",
        "UNKNOWN_OP",
        "NOT_FOUND",
        "QUEUE_FULL",
        "INTERNAL",
    }
    # codes are valid NAME values in an ERR reply
    for code in ErrorCode:
        assert validate_push({"op": "ERR", "code": code.value, "message": "m"}) == "ERR"


def test_protocol_error_carries_code_and_message() -> None:
    exc = ProtocolError(ErrorCode.BAD_FRAME, "empty frame")
    assert exc.code is ErrorCode.BAD_FRAME
    assert exc.message == "empty frame"
    assert str(exc) == "BAD_FRAME: empty frame"
    assert isinstance(exc, JobwireError)
    assert not isinstance(exc, RemoteError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.NOT_FOUND, NotFound),
        ("NOT_FOUND", NotFound),
        (ErrorCode.QUEUE_FULL, QueueFull),
        ("QUEUE_FULL", QueueFull),
        ("NOT_LEADER", NotLeader),
        ("BAD_REQUEST", RemoteError),
        ("INTERNAL", RemoteError),
        ("not_found", RemoteError),
        ("SOMETHING_NEW", RemoteError),
        ("", RemoteError),
    ],
)
def test_remote_error_maps_codes(code: str, cls: type[RemoteError]) -> None:
    exc = remote_error(code, "the message")
    assert type(exc) is cls
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, JobwireError)
    assert exc.code == code
    assert exc.message == "the message"
    assert str(exc) == f"{code}: the message"


def test_exception_hierarchy() -> None:
    assert issubclass(NotFound, RemoteError)
    assert issubclass(QueueFull, RemoteError)
    assert not issubclass(NotFound, QueueFull)
    assert issubclass(ConnectionLost, JobwireError)
    assert issubclass(ConnectionLost, ConnectionError)
    with pytest.raises(RemoteError):
        raise remote_error("NOT_FOUND", "x")


def test_not_leader_carries_the_leaders_address() -> None:
    push = {"op": "ERR", "code": "NOT_LEADER", "message": "standby", "leader": "10.0.0.2:7878"}
    assert validate_push(push) == "ERR"
    exc = remote_error(push["code"], push["message"], push.get("leader"))
    assert isinstance(exc, NotLeader)
    assert exc.leader == "10.0.0.2:7878"
    assert remote_error("NOT_LEADER", "standby").leader is None  # type: ignore[attr-defined]
    assert ErrorCode.NOT_LEADER in RETRYABLE_REFUSALS


# --- properties ---------------------------------------------------------------------

arbitrary = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=30),
        st.binary(max_size=30),
        st.sampled_from([*REQUESTS, *PUSHES, "op", "rid", "jobs", "id", "task", "payload"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["op", "rid", "id", "ids", "jobs", "error", "task", "payload"]),
                st.text(max_size=10),
                st.binary(max_size=5),
                st.integers(),
                st.none(),
                st.booleans(),
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=20,
)


def _outcome(validator: Validator, message: Any) -> str | None:
    try:
        op = validator(message)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP)
        assert isinstance(exc.message, str)
        return None
    assert isinstance(op, str)
    assert type(message) is dict and message["op"] == op
    return op


@FAST
@given(message=arbitrary)
def test_arbitrary_values_return_op_or_raise_protocol_error(message: Any) -> None:
    _outcome(validate_request, message)
    _outcome(validate_push, message)
    rid = request_id(message)
    assert rid is None or (type(rid) is int and 0 <= rid <= MAX_UINT)


def _field_values(kind: Kind) -> st.SearchStrategy[Any]:
    """Values of ``kind``, valid and invalid, for mutating a field."""
    near = [*BAD.get(kind, []), *EDGE_GOOD.get(kind, []), good_value(kind)]
    return st.one_of(st.sampled_from(near), arbitrary)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Validator, str, dict[str, Any], str]:
    what, op = draw(st.sampled_from(ALL_OPS))
    table, validator = table_of(what)
    message = message_for(table, op, everything=draw(st.booleans()))
    schema = table[op]
    name = draw(st.sampled_from([*schema, "op", "extra"]))
    if name in schema:
        message[name] = draw(_field_values(schema[name].kind))
    elif name == "extra":
        message[draw(st.text(max_size=5))] = draw(arbitrary)
    else:
        message["op"] = draw(st.one_of(st.sampled_from(ALL_OPS).map(lambda t: t[1]), arbitrary))
    if draw(st.booleans()) and schema:
        message.pop(draw(st.sampled_from(sorted(schema))), None)
    return validator, op, message, name


@FAST
@given(case=mutated())
def test_mutated_messages_return_op_or_raise_protocol_error(
    case: tuple[Validator, str, dict[str, Any], str],
) -> None:
    validator, op, message, name = case
    result = _outcome(validator, message)
    if result is None:
        return
    # A message that got through must still be well-formed where it was touched.
    if name == "op":
        assert result in REQUESTS or result in PUSHES
    elif name in table_of("request" if validator is validate_request else "push")[0][op]:
        value = message.get(name)
        field = table_of("request" if validator is validate_request else "push")[0][op][name]
        if field.kind in (Kind.UINT, Kind.INT):
            assert value is None or type(value) is int
        if field.kind is Kind.SECONDS:
            assert value is None or (0 <= value <= MAX_SECONDS and not math.isnan(value))


_names = st.one_of(
    st.text(min_size=1, max_size=12),
    st.integers(1, MAX_NAME_LENGTH).map(lambda n: "é" * n),
)
_SIMPLE_VALID: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.STR: st.text(),
    Kind.NAME: _names,
    Kind.ID: _names,
    Kind.TEXT: st.text(max_size=100),
    Kind.INT: st.integers(-MAX_UINT, MAX_UINT),
    Kind.UINT: st.integers(0, MAX_UINT),
    Kind.SECONDS: st.one_of(
        st.integers(0, int(MAX_SECONDS)), st.floats(0, MAX_SECONDS, allow_nan=False)
    ),
    Kind.BOOL: st.booleans(),
    Kind.FRACTION: st.one_of(st.integers(0, 1), st.floats(0, 1, allow_nan=False)),
    Kind.PROGRESS_INFO: st.binary(max_size=50),
    Kind.BIN: st.binary(max_size=50),
    Kind.NAMES: st.lists(_names, max_size=3),
    Kind.IDS: st.lists(_names, max_size=3),
    Kind.MAP: st.dictionaries(st.text(max_size=5), st.integers(-MAX_UINT, MAX_UINT), max_size=3),
    Kind.TASK_DEFAULTS: st.dictionaries(
        _names,
        st.fixed_dictionaries(
            {},
            optional={
                "max_attempts": st.one_of(st.none(), st.integers(1, MAX_TASK_ATTEMPTS)),
                "lease": st.one_of(
                    st.none(),
                    st.integers(1, int(MAX_SECONDS)),
                    st.floats(0, MAX_SECONDS, exclude_min=True, allow_nan=False),
                ),
            },
        ),
        max_size=3,
    ),
}


def _valid(kind: Kind) -> st.SearchStrategy[Any]:
    """Schema-valid values of ``kind`` (all msgpack-encodable)."""
    if kind is Kind.JOB_SPECS:
        return st.lists(_valid_map(JOB_SPEC), max_size=3)
    if kind is Kind.DELIVERIES:
        return st.lists(_valid_map(DELIVERY), max_size=3)
    if kind is Kind.SCHEDULES:
        return st.lists(_valid_map(SCHEDULE_SPEC), max_size=3)
    if kind is Kind.ERROR:
        return _valid_map(ERROR_INFO)
    return _SIMPLE_VALID[kind]


def _valid_map(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {
        n: _valid(f.kind) for n, f in schema.items() if f.required
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        n: st.one_of(st.none(), _valid(f.kind)) for n, f in schema.items() if not f.required
    }
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[Validator, str, dict[str, Any]]:
    what, op = draw(st.sampled_from(ALL_OPS))
    table, validator = table_of(what)
    message = draw(_valid_map(table[op]))
    return validator, op, {"op": op, **message}


@settings(FAST, max_examples=200)
@given(case=valid_messages())
def test_schema_valid_messages_validate(case: tuple[Validator, str, dict[str, Any]]) -> None:
    validator, op, message = case
    assert validator(message) == op
    assert validator(decode_body(encode_frame(message)[HEADER_SIZE:])) == op


# --- regressions: bugs these tests found ---------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"op": "PING", "rid": 10**5000},
        {
            "op": "SUBMIT",
            "rid": 1,
            "jobs": [{"task": "t", "payload": b"", "priority": -(10**5000)}],
        },
    ],
)
def test_huge_int_raises_protocol_error(message: dict[str, Any]) -> None:
    check(validate_request, message, ErrorCode.BAD_REQUEST)


def test_error_for_any_request_fits_in_an_err_reply() -> None:
    request = {"op": "PING", "rid": 1, "k" * (MAX_TEXT_LENGTH + 1): 0}
    with pytest.raises(ProtocolError) as info:
        validate_request(request)
    reply = {"op": "ERR", "rid": 1, "code": info.value.code.value, "message": info.value.message}
    assert validate_push(reply) == "ERR"


@st.composite
def near_valid_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any], bool]:
    """A valid message with one field maybe replaced by an arbitrary value, or dropped."""
    what, op = draw(st.sampled_from(ALL_OPS))
    table, _ = table_of(what)
    message = {"op": op, **draw(_valid_map(table[op]))}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(message)))
        if draw(st.booleans()):
            del message[key]
        else:
            message[key] = draw(arbitrary)
    return what, message, op == "OK"


@settings(FAST, max_examples=600)
@given(case=near_valid_messages())
def test_fast_and_detailed_validation_agree(case: tuple[str, dict[str, Any], bool]) -> None:
    """The fast yes/no path and the path that names the fault give the same verdict."""
    what, message, open_ended = case
    op = message.get("op")
    if not isinstance(op, str):
        return
    compiled = (
        messages_module._COMPILED_REQUESTS
        if what == "request"
        else messages_module._COMPILED_PUSHES
    )
    tables = (
        messages_module._REQUESTS_WITH_OP if what == "request" else messages_module._PUSHES_WITH_OP
    )
    fast = compiled.get(op)
    if fast is None:
        return
    fast_verdict = fast(message)
    try:
        messages_module._check_map(op, tables[op], message, open_ended)
        detailed_verdict = True
    except ProtocolError:
        detailed_verdict = False
    assert fast_verdict == detailed_verdict


_SAMPLE_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    2**70,
    0.5,
    -0.5,
    math.nan,
    math.inf,
    "",
    "x",
    "x" * (MAX_NAME_LENGTH + 1),
    b"",
    b"x" * (MAX_PROGRESS_INFO + 1),
    [],
    ["x"],
    [""],
    [{}],
    {},
    {"t": {}},
    {"t": {"max_attempts": 0}},
    {"type": "E", "message": "m"},
]


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("required", [False, True])
def test_generated_check_of_every_kind_agrees_with_the_detailed_one(
    kind: Kind, required: bool
) -> None:
    """Kinds no table uses today get a generated check too, with the same verdicts."""
    schema = {"f": Field("f", kind, required)}
    fast = messages_module._fast_check("T", schema)
    for value in _SAMPLE_VALUES:
        for message in ({"op": "T", "f": value}, {"op": "T"}, {"op": "T", "f": value, "g": 1}):
            try:
                messages_module._check_map("T", {"op": Field("op", Kind.NAME), **schema}, message)
                detailed = True
            except ProtocolError:
                detailed = False
            assert fast(message) == detailed, (kind, message)
