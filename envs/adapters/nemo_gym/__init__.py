"""Train on NeMo Gym environments: a task JSONL plus a running NeMo Gym server (`spec.py`).

`serve.py` starts a NeMo Gym resources server class without NeMo Gym's head server or Ray; it runs
in NeMo Gym's own Python environment (`make nemo-gym` builds one), not in labrl's.
"""
