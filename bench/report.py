"""The results: a table on stdout, and the same figures as JSON with the machine's details."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench.procs import ROOT
from bench.workloads import Figure, Result, Settings

HEADERS = ("workload", "figure", "unit", "N", "runs")
PACKAGES = ("broker", "protocol", "worker")


def format_value(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.2f}"
    if unit == "us/job":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def rows(results: list[Result], settings: Settings) -> list[dict[str, Any]]:
    """One row per figure: what the table shows and the JSON holds."""
    out: list[dict[str, Any]] = []
    for result in results:
        workload = result.workload
        extras = sorted(
            {key for sample in result.samples for key in sample}
            - {figure.key for figure in workload.figures}
        )
        for figure in workload.figures:
            out.append(row(result, figure, extras, settings))
    return out


def row(result: Result, figure: Figure, extras: list[str], settings: Settings) -> dict[str, Any]:
    workload = result.workload
    value = result.median(figure.key)
    if workload.unavailable is not None:
        shown = workload.unavailable
    elif result.error is not None:
        first_line = result.error.splitlines()[0] if result.error else "error"
        shown = f"error: {first_line[:70]}"
    else:
        shown = format_value(value, figure.unit) if value is not None else "-"
    runs = len(result.samples)
    return {
        "workload": workload.id,
        "label": figure.label,
        "figure": figure.key,
        "value": value,
        "unit": figure.unit,
        "n": workload.n,
        "runs": runs,
        "runs_requested": 0 if workload.unavailable else settings.runs,
        "samples": [sample[figure.key] for sample in result.samples if figure.key in sample],
        "extras": {key: result.median(key) for key in extras},
        "broker_args": list(workload.broker_args),
        "error": result.error,
        "unavailable": workload.unavailable,
        "shown": shown,
    }


def table(table_rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            r["label"],
            r["shown"],
            r["unit"] if r["value"] is not None else "",
            f"{r['n']:,}",
            "-"
            if r["unavailable"]
            else str(r["runs"])
            if r["runs"] == r["runs_requested"]
            else f"{r['runs']}/{r['runs_requested']}",
        )
        for r in table_rows
    ]
    widths = [max(len(cells[i]) for cells in [HEADERS, *lines]) for i in range(len(HEADERS))]
    right = {1, 3, 4}

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(HEADERS), rule, *(render(cells) for cells in lines)])


def markdown_table(table_rows: list[dict[str, Any]]) -> str:
    out = ["| workload | figure | unit | N | runs |", "|---|--:|---|--:|--:|"]
    for r in table_rows:
        unit = r["unit"] if r["value"] is not None else ""
        runs = "-" if r["unavailable"] else r["runs"]
        out.append(f"| {r['label']} | {r['shown']} | {unit} | {r['n']:,} | {runs} |")
    return "\n".join(out)


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "memory_total": _first("/proc/meminfo", "MemTotal"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "uvloop": _version("uvloop"),
        "msgpack": _version("msgpack"),
    }


def source_fingerprint() -> dict[str, Any]:
    """Which code was measured: a digest of broker/, protocol/ and worker/ (*.py).

    Others edit these while benchmarks run; comparing the fingerprint taken
    before and after a run tells whether all its figures measured one version.
    """
    files = sorted(path for package in PACKAGES for path in (ROOT / package).glob("*.py"))
    digest = hashlib.sha256()
    newest = 0.0
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
        newest = max(newest, path.stat().st_mtime)
    changed = datetime.datetime.fromtimestamp(newest, datetime.UTC)
    return {
        "sha256": digest.hexdigest()[:16],
        "files": len(files),
        "newest_change": changed.isoformat(timespec="seconds"),
    }


def write_json(
    path: Path,
    table_rows: list[dict[str, Any]],
    settings: Settings,
    argv: list[str],
    *,
    interrupted: bool = False,
    load_average_at_start: tuple[float, float, float] | None = None,
    sources_at_start: dict[str, Any] | None = None,
) -> None:
    sources_at_end = source_fingerprint()
    document = {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *argv],
        "settings": {"n": settings.n, "runs": settings.runs, "quick": settings.quick},
        "interrupted": interrupted,
        # Other work on the machine skews every figure: the 1, 5, 15-minute load averages.
        "load_average_at_start": list(load_average_at_start or ()),
        "load_average_at_end": list(os.getloadavg()),
        "machine": machine_info(),
        "sources_at_start": sources_at_start,
        "sources_at_end": sources_at_end,
        "code_changed_during_run": sources_at_start is not None
        and sources_at_start["sha256"] != sources_at_end["sha256"],
        "rows": table_rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
