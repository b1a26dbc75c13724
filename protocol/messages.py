"""The message schema: every operation, its fields, and one validator.

Every frame holds a msgpack map with a string ``op``. Requests that expect a
reply carry ``rid``, an unsigned integer the sender chooses; the reply (``OK``
or ``ERR``) echoes it. Notifications (worker reports, broker pushes) carry no
``rid`` and get no reply. ``docs/PROTOCOL.md`` is the prose version of the
tables below; the tables are what is enforced.

Job arguments and results travel as ``payload``/``result`` fields of msgpack
``bin`` type holding msgpack-encoded bytes, so the broker stores and forwards
them without decoding them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from protocol.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION: Final = 1

MAX_NAME_LENGTH: Final = 200
MAX_ID_LENGTH: Final = 200
MAX_TEXT_LENGTH: Final = 64 * 1024
MAX_LIST_LENGTH: Final = 100_000
MAX_SECONDS: Final = 10 * 365 * 24 * 3600.0
MAX_UINT: Final = 2**63 - 1
# The largest max_attempts a worker may announce for a task (HELLO.tasks).
MAX_TASK_ATTEMPTS: Final = 1_000_000
# The most bytes a progress report's ``info`` (msgpack of a map) may take.
MAX_PROGRESS_INFO: Final = 1024


class Op:
    """Operation names, as they appear in the ``op`` field."""

    # broker -> peer
    WELCOME: Final = "WELCOME"
    OK: Final = "OK"
    ERR: Final = "ERR"
    JOBS: Final = "JOBS"
    DONE: Final = "DONE"
    REVOKE: Final = "REVOKE"
    EMPTY: Final = "EMPTY"
    SHUTDOWN: Final = "SHUTDOWN"
    PROGRESSED: Final = "PROGRESSED"  # a followed job's progress report
    # any peer -> broker, request with rid
    HELLO: Final = "HELLO"
    PING: Final = "PING"
    # producer requests
    SUBMIT: Final = "SUBMIT"
    WATCH: Final = "WATCH"
    STATUS: Final = "STATUS"
    CANCEL: Final = "CANCEL"
    STATS: Final = "STATS"
    FAILED: Final = "FAILED"
    RETRY: Final = "RETRY"
    PURGE_FAILED: Final = "PURGE_FAILED"
    FOLLOW: Final = "FOLLOW"
    LIST: Final = "LIST"
    PAUSE: Final = "PAUSE"
    RESUME: Final = "RESUME"
    SET_LIMITS: Final = "SET_LIMITS"
    SCHEDULE: Final = "SCHEDULE"
    UNSCHEDULE: Final = "UNSCHEDULE"
    SCHEDULES: Final = "SCHEDULES"
    # worker notifications
    PROGRESS: Final = "PROGRESS"
    READY: Final = "READY"
    ACK: Final = "ACK"
    FAIL: Final = "FAIL"
    RELEASE: Final = "RELEASE"
    HEARTBEAT: Final = "HEARTBEAT"
    QUIET: Final = "QUIET"


class Role:
    CLIENT: Final = "client"
    WORKER: Final = "worker"


class Kind(Enum):
    STR = "string"
    NAME = "name"  # non-empty string of at most MAX_NAME_LENGTH
    ID = "id"  # non-empty string of at most MAX_ID_LENGTH
    TEXT = "text"  # string of at most MAX_TEXT_LENGTH
    INT = "integer"
    UINT = "unsigned integer"
    FRACTION = "number in 0..1"
    PROGRESS_INFO = f"binary of at most {MAX_PROGRESS_INFO} bytes"
    SECONDS = "non-negative number"
    BOOL = "boolean"
    BIN = "binary"
    NAMES = "array of names"
    IDS = "array of ids"
    MAP = "map"
    ANY = "any value"
    JOB_SPECS = "array of job specs"
    ERROR = "error map"
    DELIVERIES = "array of deliveries"
    SCHEDULES = "array of schedules"
    # {task name: {max_attempts?: 1..MAX_TASK_ATTEMPTS, lease?: 0 < seconds <= MAX_SECONDS}};
    # other keys of the inner maps are ignored, so later peers can announce more.
    TASK_DEFAULTS = "map of task defaults"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    required: bool = False


def _fields(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


RID = Field("rid", Kind.UINT, required=True)

JOB_SPEC: Final = _fields(
    Field("task", Kind.NAME, required=True),
    Field("payload", Kind.BIN, required=True),
    Field("queue", Kind.NAME),
    Field("priority", Kind.INT),
    Field("delay", Kind.SECONDS),
    Field("max_attempts", Kind.UINT),
    Field("timeout", Kind.SECONDS),
    Field("lease", Kind.SECONDS),
    Field("id", Kind.ID),
    Field("result_ttl", Kind.SECONDS),
    Field("depends_on", Kind.IDS),
    Field("unique_key", Kind.ID),
    Field("unique_for", Kind.SECONDS),
)

# A periodic job (HELLO.schedules, SCHEDULE): exactly one of cron and every,
# checked with the time zone by protocol.schedules.check_schedule.
SCHEDULE_SPEC: Final = _fields(
    Field("name", Kind.NAME, required=True),
    Field("task", Kind.NAME, required=True),
    Field("cron", Kind.TEXT),
    Field("every", Kind.SECONDS),
    Field("timezone", Kind.NAME),
    Field("payload", Kind.BIN),
    Field("queue", Kind.NAME),
)

ERROR_INFO: Final = _fields(
    Field("type", Kind.TEXT, required=True),
    Field("message", Kind.TEXT, required=True),
    Field("traceback", Kind.TEXT),
)

DELIVERY: Final = _fields(
    Field("id", Kind.ID, required=True),
    Field("task", Kind.NAME, required=True),
    Field("payload", Kind.BIN, required=True),
    Field("queue", Kind.NAME, required=True),
    Field("attempt", Kind.UINT, required=True),
    Field("max_attempts", Kind.UINT, required=True),
    Field("lease", Kind.SECONDS, required=True),
    Field("timeout", Kind.SECONDS),
)

# What a peer may send the broker.
REQUESTS: Final[dict[str, dict[str, Field]]] = {
    Op.HELLO: _fields(
        RID,
        Field("version", Kind.UINT, required=True),
        Field("role", Kind.NAME, required=True),
        Field("name", Kind.TEXT),
        Field("auth", Kind.BIN),
        Field("queues", Kind.NAMES),
        Field("burst", Kind.BOOL),
        Field("tasks", Kind.TASK_DEFAULTS),
        # Worker only: the tasks it runs; it is sent only jobs of these (routing by task).
        Field("task_names", Kind.NAMES),
        # Worker only: periodic jobs its tasks declare (the broker owns and fires them).
        Field("schedules", Kind.SCHEDULES),
    ),
    Op.PING: _fields(RID),
    Op.SUBMIT: _fields(
        RID, Field("jobs", Kind.JOB_SPECS, required=True), Field("watch", Kind.BOOL)
    ),
    Op.WATCH: _fields(RID, Field("ids", Kind.IDS, required=True)),
    Op.STATUS: _fields(RID, Field("id", Kind.ID, required=True)),
    Op.CANCEL: _fields(RID, Field("id", Kind.ID, required=True)),
    Op.STATS: _fields(RID),
    Op.FAILED: _fields(RID, Field("limit", Kind.UINT)),
    Op.RETRY: _fields(RID, Field("ids", Kind.IDS), Field("all", Kind.BOOL)),
    Op.PURGE_FAILED: _fields(RID),
    Op.PAUSE: _fields(RID, Field("queue", Kind.NAME, required=True)),
    Op.RESUME: _fields(RID, Field("queue", Kind.NAME, required=True)),
    # Exactly one of queue and task (checked by the handler); rate as in protocol.rates.
    Op.SCHEDULE: _fields(RID, *SCHEDULE_SPEC.values()),
    Op.UNSCHEDULE: _fields(RID, Field("name", Kind.NAME, required=True)),
    Op.SCHEDULES: _fields(RID),
    Op.SET_LIMITS: _fields(
        RID,
        Field("queue", Kind.NAME),
        Field("task", Kind.NAME),
        Field("max_running", Kind.UINT),
        Field("rate", Kind.NAME),
    ),
    Op.READY: _fields(Field("n", Kind.UINT, required=True)),
    Op.ACK: _fields(
        Field("id", Kind.ID, required=True),
        Field("attempt", Kind.UINT, required=True),
        Field("result", Kind.BIN, required=True),
    ),
    Op.FAIL: _fields(
        Field("id", Kind.ID, required=True),
        Field("attempt", Kind.UINT, required=True),
        Field("error", Kind.ERROR, required=True),
        Field("retry_in", Kind.SECONDS),
    ),
    Op.RELEASE: _fields(
        Field("id", Kind.ID, required=True), Field("attempt", Kind.UINT, required=True)
    ),
    Op.HEARTBEAT: _fields(Field("ids", Kind.IDS, required=True)),
    Op.QUIET: _fields(),
    Op.FOLLOW: _fields(RID, Field("id", Kind.ID, required=True)),
    Op.LIST: _fields(
        RID,
        Field("queue", Kind.NAME, required=True),
        Field("state", Kind.NAME),
        Field("limit", Kind.UINT),
    ),
    Op.PROGRESS: _fields(
        Field("id", Kind.ID, required=True),
        Field("attempt", Kind.UINT, required=True),
        Field("fraction", Kind.FRACTION, required=True),
        Field("info", Kind.PROGRESS_INFO),
    ),
}

# What the broker may send a peer.
PUSHES: Final[dict[str, dict[str, Field]]] = {
    Op.WELCOME: _fields(
        Field("version", Kind.UINT, required=True),
        Field("server", Kind.TEXT, required=True),
        Field("nonce", Kind.BIN, required=True),
        Field("auth", Kind.BOOL, required=True),
    ),
    Op.OK: _fields(RID),
    Op.ERR: _fields(
        Field("rid", Kind.UINT),
        Field("code", Kind.NAME, required=True),
        Field("message", Kind.TEXT, required=True),
        # With NOT_LEADER: the shard leader's host:port, when the standby knows it.
        Field("leader", Kind.TEXT),
    ),
    Op.JOBS: _fields(Field("jobs", Kind.DELIVERIES, required=True)),
    Op.DONE: _fields(
        Field("id", Kind.ID, required=True),
        Field("state", Kind.NAME, required=True),
        Field("result", Kind.BIN),
        Field("error", Kind.ERROR),
    ),
    Op.REVOKE: _fields(
        Field("id", Kind.ID, required=True), Field("attempt", Kind.UINT, required=True)
    ),
    Op.EMPTY: _fields(),
    Op.SHUTDOWN: _fields(),
    Op.PROGRESSED: _fields(
        Field("id", Kind.ID, required=True),
        Field("fraction", Kind.FRACTION, required=True),
        Field("info", Kind.PROGRESS_INFO),
    ),
}

# OK replies carry fields that depend on the request; they are checked by
# whoever made the request, so unknown keys are allowed in OK only.
_OPEN_ENDED: Final = frozenset({Op.OK})


def _bad(where: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"{where}: {message}")


def _clip(value: Any) -> str:
    """A short repr of an untrusted value, for an error message that must stay small."""
    if isinstance(value, int) and value.bit_length() > 256:
        return "an integer too large to show"  # repr() refuses ints of 4300+ digits
    scalar = value is None or isinstance(value, (str, bytes, int, float))
    text = repr(value) if scalar else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _check_value(where: str, kind: Kind, value: Any) -> None:
    if kind is Kind.ANY:
        return
    if kind is Kind.BOOL:
        if type(value) is not bool:
            raise _bad(where, f"expected boolean, got {_type_name(value)}")
        return
    if kind in (Kind.INT, Kind.UINT):
        if type(value) is not int:
            raise _bad(where, f"expected {kind.value}, got {_type_name(value)}")
        if kind is Kind.UINT and not 0 <= value <= MAX_UINT:
            raise _bad(where, f"expected {kind.value}, got {_clip(value)}")
        if kind is Kind.INT and not -MAX_UINT <= value <= MAX_UINT:
            raise _bad(where, f"integer {_clip(value)} out of range")
        return
    if kind is Kind.SECONDS:
        if type(value) not in (int, float):
            raise _bad(where, f"expected number, got {_type_name(value)}")
        if not (0 <= value <= MAX_SECONDS) or math.isnan(value):
            raise _bad(where, f"expected a number of seconds in 0..{MAX_SECONDS:.0f}")
        return
    if kind is Kind.FRACTION:
        if type(value) not in (int, float):
            raise _bad(where, f"expected number, got {_type_name(value)}")
        if not 0 <= value <= 1:  # NaN fails too
            raise _bad(where, f"expected a number in 0..1, got {_clip(value)}")
        return
    if kind in (Kind.BIN, Kind.PROGRESS_INFO):
        if type(value) is not bytes:
            raise _bad(where, f"expected binary, got {_type_name(value)}")
        if kind is Kind.PROGRESS_INFO and len(value) > MAX_PROGRESS_INFO:
            raise _bad(where, f"{len(value)} bytes is more than {MAX_PROGRESS_INFO}")
        return
    if kind in (Kind.STR, Kind.NAME, Kind.ID, Kind.TEXT):
        if type(value) is not str:
            raise _bad(where, f"expected string, got {_type_name(value)}")
        limit = {Kind.NAME: MAX_NAME_LENGTH, Kind.ID: MAX_ID_LENGTH}.get(kind, MAX_TEXT_LENGTH)
        if len(value) > limit:
            raise _bad(where, f"string longer than {limit} characters")
        if kind in (Kind.NAME, Kind.ID) and not value:
            raise _bad(where, "must not be empty")
        return
    if kind in (Kind.NAMES, Kind.IDS):
        _check_list(where, value)
        item = Kind.NAME if kind is Kind.NAMES else Kind.ID
        for i, element in enumerate(value):
            _check_value(f"{where}[{i}]", item, element)
        return
    if kind is Kind.MAP:
        if type(value) is not dict:
            raise _bad(where, f"expected map, got {_type_name(value)}")
        return
    if kind is Kind.ERROR:
        _check_map(where, ERROR_INFO, value)
        return
    if kind is Kind.TASK_DEFAULTS:
        _check_task_defaults(where, value)
        return
    if kind in (Kind.JOB_SPECS, Kind.DELIVERIES, Kind.SCHEDULES):
        _check_list(where, value)
        schema = {Kind.JOB_SPECS: JOB_SPEC, Kind.DELIVERIES: DELIVERY}.get(kind, SCHEDULE_SPEC)
        for i, element in enumerate(value):
            _check_map(f"{where}[{i}]", schema, element)
        return
    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover


def _check_list(where: str, value: Any) -> None:
    if type(value) is not list:
        raise _bad(where, f"expected array, got {_type_name(value)}")
    if len(value) > MAX_LIST_LENGTH:
        raise _bad(where, f"array longer than {MAX_LIST_LENGTH}")


def _check_task_defaults(where: str, value: Any) -> None:
    if type(value) is not dict:
        raise _bad(where, f"expected map, got {_type_name(value)}")
    if len(value) > MAX_LIST_LENGTH:
        raise _bad(where, f"map longer than {MAX_LIST_LENGTH}")
    for name, defaults in value.items():
        entry = f"{where}[{_clip(name)}]"
        _check_value(f"{entry}: task name", Kind.NAME, name)
        if type(defaults) is not dict:
            raise _bad(entry, f"expected map, got {_type_name(defaults)}")
        attempts = defaults.get("max_attempts")
        if attempts is not None and not _is_task_attempts(attempts):
            got = _clip(attempts) if type(attempts) is int else _type_name(attempts)
            raise _bad(
                f"{entry}.max_attempts", f"expected an integer in 1..{MAX_TASK_ATTEMPTS}, got {got}"
            )
        lease = defaults.get("lease")
        if lease is not None and not _is_lease(lease):
            got = _clip(lease) if type(lease) in (int, float) else _type_name(lease)
            raise _bad(
                f"{entry}.lease",
                f"expected a positive number of seconds up to {MAX_SECONDS:.0f}, got {got}",
            )


def _check_map(where: str, schema: dict[str, Field], value: Any, open_ended: bool = False) -> None:
    if type(value) is not dict:
        raise _bad(where, f"expected map, got {_type_name(value)}")
    for key, element in value.items():
        field = schema.get(key)
        if field is None:
            if open_ended:
                continue
            raise _bad(where, f"unknown field {_clip(key)}")
        if element is None and not field.required:
            continue
        _check_value(f"{where}.{key}", field.kind, element)
    for field in schema.values():
        if field.required and value.get(field.name) is None:
            raise _bad(where, f"missing required field {field.name!r}")


_OP_FIELD: Final = Field("op", Kind.NAME, required=True)
_REQUESTS_WITH_OP: Final = {op: {"op": _OP_FIELD, **schema} for op, schema in REQUESTS.items()}
_PUSHES_WITH_OP: Final = {op: {"op": _OP_FIELD, **schema} for op, schema in PUSHES.items()}


# -- the fast path ------------------------------------------------------------------
# Every message is checked first by a function generated from its op's table
# (after fastjsonschema): one function per op, every field's test written out
# inline, nested maps (job specs, deliveries, schedules, errors) checked in
# the same function's loops, so a valid message costs a few dict lookups and
# type checks and no call per field. They only answer yes or no; only a
# message they refuse goes through _check_map above, which finds and names
# the fault. Both read the same tables; test_messages.py holds them to the
# same verdicts.

Predicate = Callable[[Any], bool]

# The value of an absent optional field (None, when present, means "not set").
_MISSING: Final = object()


def _is_task_attempts(value: Any) -> bool:
    return type(value) is int and 1 <= value <= MAX_TASK_ATTEMPTS


def _is_lease(value: Any) -> bool:
    kind = type(value)
    return (kind is int or kind is float) and 0 < value <= MAX_SECONDS  # NaN fails too


def _is_task_defaults(value: Any) -> bool:
    if type(value) is not dict or len(value) > MAX_LIST_LENGTH:
        return False
    for name, defaults in value.items():
        if type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
            return False
        if type(defaults) is not dict:
            return False
        attempts = defaults.get("max_attempts")
        if attempts is not None and not _is_task_attempts(attempts):
            return False
        lease = defaults.get("lease")
        if lease is not None and not _is_lease(lease):
            return False
    return True


def _string_test(v: str, shortest: int, longest: int) -> str:
    if not shortest:
        return f"type({v}) is str and len({v}) <= {longest}"
    return f"type({v}) is str and {shortest} <= len({v}) <= {longest}"


def _number_test(v: str, t: str, top: str) -> str:
    # NaN fails the comparison too.
    return f"(({t} := type({v})) is int or {t} is float) and 0 <= {v} <= {top}"


def _test(kind: Kind, v: str, depth: int) -> str | None:
    """A Python expression true when the value named ``v`` (maybe None) is a valid
    ``kind``; None for a kind that takes statements (arrays, maps)."""
    t = f"t{depth}"
    tests = {
        Kind.ANY: f"{v} is not None",
        Kind.BOOL: f"type({v}) is bool",
        Kind.INT: f"type({v}) is int and {-MAX_UINT} <= {v} <= {MAX_UINT}",
        Kind.UINT: f"type({v}) is int and 0 <= {v} <= {MAX_UINT}",
        Kind.SECONDS: _number_test(v, t, repr(MAX_SECONDS)),
        Kind.FRACTION: _number_test(v, t, "1"),
        Kind.BIN: f"type({v}) is bytes",
        Kind.PROGRESS_INFO: f"type({v}) is bytes and len({v}) <= {MAX_PROGRESS_INFO}",
        Kind.STR: _string_test(v, 0, MAX_TEXT_LENGTH),
        Kind.TEXT: _string_test(v, 0, MAX_TEXT_LENGTH),
        Kind.NAME: _string_test(v, 1, MAX_NAME_LENGTH),
        Kind.ID: _string_test(v, 1, MAX_ID_LENGTH),
        Kind.MAP: f"type({v}) is dict",
        Kind.TASK_DEFAULTS: f"_is_task_defaults({v})",
    }
    return tests.get(kind)


# The elements of each kind of array.
_NESTED: Final[dict[Kind, Kind | dict[str, Field]]] = {
    Kind.NAMES: Kind.NAME,
    Kind.IDS: Kind.ID,
    Kind.JOB_SPECS: JOB_SPEC,
    Kind.DELIVERIES: DELIVERY,
    Kind.SCHEDULES: SCHEDULE_SPEC,
}


def _emit_value(kind: Kind, v: str, depth: int, pad: str, out: list[str]) -> None:
    """Statements returning False unless the value named ``v`` (maybe None) is a valid ``kind``."""
    test = _test(kind, v, depth)
    if test is not None:
        out.append(f"{pad}if not ({test}):")
        out.append(f"{pad}    return False")
        return
    if kind is Kind.ERROR:
        _emit_map(ERROR_INFO, v, depth + 1, pad, out)
        return
    item = _NESTED[kind]  # an array
    out.append(f"{pad}if type({v}) is not list or len({v}) > {MAX_LIST_LENGTH}:")
    out.append(f"{pad}    return False")
    element = f"e{depth + 1}"
    out.append(f"{pad}for {element} in {v}:")
    if isinstance(item, Kind):
        _emit_value(item, element, depth + 1, pad + "    ", out)
    else:
        _emit_map(item, element, depth + 1, pad + "    ", out)


def _emit_map(
    schema: dict[str, Field],
    m: str,
    depth: int,
    pad: str,
    out: list[str],
    open_ended: bool = False,
    known: int = 0,
) -> None:
    """Statements that return False unless the value named ``m`` is a map valid for ``schema``.

    ``known`` counts keys the caller has checked already (a message's ``op``).
    A map has no unknown key when it has as many keys as the fields found.
    """
    v, n = f"v{depth}", f"n{depth}"
    if not known:
        out.append(f"{pad}if type({m}) is not dict:")
        out.append(f"{pad}    return False")
    required = [field for field in schema.values() if field.required]
    optional = [field for field in schema.values() if not field.required]
    for field in required:  # None is refused by every required test
        out.append(f"{pad}{v} = {m}.get({field.name!r})")
        _emit_value(field.kind, v, depth, pad, out)
    if not optional and open_ended:
        return
    if not optional:
        out.append(f"{pad}if len({m}) != {known + len(required)}:")
        out.append(f"{pad}    return False")
        return
    inner = pad
    if not open_ended:  # only required fields: done at once
        out.append(f"{pad}if len({m}) != {known + len(required)}:")
        out.append(f"{pad}    {n} = {known + len(required)}")
        inner = pad + "    "
    for field in optional:
        out.append(f"{inner}{v} = {m}.get({field.name!r}, _MISSING)")
        out.append(f"{inner}if {v} is not _MISSING:")
        if not open_ended:
            out.append(f"{inner}    {n} += 1")
        out.append(f"{inner}    if {v} is not None:")
        _emit_value(field.kind, v, depth, inner + "        ", out)
    if not open_ended:
        out.append(f"{inner}if len({m}) != {n}:")
        out.append(f"{inner}    return False")


def _fast_check(op: str, schema: dict[str, Field]) -> Predicate:
    """The generated yes/no check of a map whose ``op`` is ``op``."""
    lines = [f"def ok_{op}(m0: Any) -> bool:"]
    _emit_map(schema, "m0", 0, "    ", lines, open_ended=op in _OPEN_ENDED, known=1)
    lines.append("    return True")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {
        "Any": Any,
        "_MISSING": _MISSING,
        "_is_task_defaults": _is_task_defaults,
    }
    exec(compile(source, f"<jobwire check of {op}>", "exec"), namespace)  # source from our tables
    check: Predicate = namespace[f"ok_{op}"]
    check.__doc__ = source  # the generated source, for a reader
    return check


_COMPILED_REQUESTS: Final = {op: _fast_check(op, schema) for op, schema in REQUESTS.items()}
_COMPILED_PUSHES: Final = {op: _fast_check(op, schema) for op, schema in PUSHES.items()}


def _refuse(
    message: Any, table: dict[str, dict[str, Field]], compiled: dict[str, Predicate], what: str
) -> ProtocolError:
    """The error naming what is wrong with a message the fast check refused."""
    if type(message) is not dict:
        return _bad(what, f"expected a map, got {_type_name(message)}")
    op = message.get("op")
    if type(op) is not str:
        return _bad(what, "missing string field 'op'")
    if op not in compiled:
        return ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:MAX_NAME_LENGTH]!r}")
    try:
        _check_map(op, table[op], message, op in _OPEN_ENDED)
    except ProtocolError as exc:
        return exc
    return _bad(op, "invalid message")  # pragma: no cover - the slow path names the fault


def _validator(
    table: dict[str, dict[str, Field]], compiled: dict[str, Predicate], what: str
) -> Callable[[Any], str]:
    def validate(message: Any) -> str:
        if type(message) is dict:
            op = message.get("op")
            if type(op) is str:
                check = compiled.get(op)
                if check is not None and check(message):
                    return op
        raise _refuse(message, table, compiled, what)

    return validate


validate_request: Final = _validator(_REQUESTS_WITH_OP, _COMPILED_REQUESTS, "request")
"""Check a message a peer sent the broker; return its op.

Raises only :class:`ProtocolError`: ``UNKNOWN_OP`` for an op the broker
does not have, ``BAD_REQUEST`` naming the field for anything else.
"""

validate_push: Final = _validator(_PUSHES_WITH_OP, _COMPILED_PUSHES, "message")
"""Check a message the broker sent a peer; return its op."""


def request_id(message: Any) -> int | None:
    """The ``rid`` of a message if it has a usable one, for replying to a bad request."""
    if type(message) is dict:
        rid = message.get("rid")
        if type(rid) is int and 0 <= rid <= MAX_UINT:
            return rid
    return None
