"""Support code shared by the tests, the benchmarks and the examples; not installed.

Importable when Python runs from the project root (``python -m pytest``,
``python -m bench``, ``python -m examples.demo``).
"""
