"""jobwire's benchmark suite: ``python -m bench`` (``make bench``).

Real broker and worker processes on 127.0.0.1, producers in this process.
See ``bench/README.md`` for what each workload measures.
"""
