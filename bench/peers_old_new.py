"""``OLD_TREE=DIR python bench/peers_old_new.py [run.py's arguments]``: the peer harness
(``../shared/peers/run.py``, run with its own venv's python) with two more
systems, ``jobwire-batch-old`` and ``jobwire-single-old``: the same benchmarks
with ``PYTHONPATH=$OLD_TREE``, a worktree of older code, so that old and new
are measured in one run (only ratios within a run count on a shared machine).
``PEERS_DIR`` is the harness's directory (default ``../shared/peers``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

PEERS_DIR = os.environ.get(
    "PEERS_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers")
)
sys.path.insert(0, os.path.abspath(PEERS_DIR))

import run  # type: ignore[import-not-found]  # noqa: E402 - the harness's own module

OLD_TREE = os.environ["OLD_TREE"]
for system in ("jobwire-batch", "jobwire-single"):
    run.SYSTEMS[f"{system}-old"] = run.SYSTEMS[system]
run_one = run.run_one


def run_one_in_its_tree(name: str, *args: Any) -> Any:
    """Run ``name`` with the old tree first on the path for the ``-old`` systems."""
    saved = os.environ.pop("PYTHONPATH", None)
    if name.endswith("-old"):
        os.environ["PYTHONPATH"] = OLD_TREE
    try:
        record = run_one(name, *args)
    finally:
        os.environ.pop("PYTHONPATH", None)
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    record["system"] = name
    return record


run.run_one = run_one_in_its_tree

if __name__ == "__main__":
    run.main()
