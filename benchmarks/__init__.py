"""Benchmarks of labrl on this machine; `python -m benchmarks.run_all` runs the suite (see README there).

Kept import-free: `benchmarks.repeat_task` is also imported from TRL's own virtual environment.
"""
