"""`make demo` reproduces the seed's run: batches of ten, each finished before the next."""

from __future__ import annotations

import re
import subprocess
import sys

from harness.processes import ROOT


def test_demo_dispatches_the_next_batch_only_when_all_ten_finished() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    events = [m.groups() for line in lines if (m := re.fullmatch(r"(\w+) job: (\d+)", line))]
    for verb in ("Dispatch", "Run", "Finished"):
        assert sorted(int(n) for v, n in events if v == verb) == list(range(1, 31)), verb
    for batch in range(3):
        members = {str(n) for n in range(batch * 10 + 1, batch * 10 + 11)}
        last_finish = max(i for i, (v, n) in enumerate(events) if v == "Finished" and n in members)
        later_dispatches = [
            i for i, (v, n) in enumerate(events) if v == "Dispatch" and int(n) > batch * 10 + 10
        ]
        assert all(i > last_finish for i in later_dispatches)
    assert lines[-1].startswith("Done: 30 jobs")
