"""Keep start-up objects out of the cyclic garbage collector's full scans (`gc.freeze`).

A process that has imported vLLM, torch and transformers holds ~650k container objects once it
has started (functions, tuples, dicts, types: module state, kept for the process's life). Every
full (generation-2) collection walks all of them and frees almost nothing. In a GenerationWorker
during a tiny-model run (AMD EPYC, vLLM 0.32) those collections took 110-350 ms, every ~6 s, and
the engine idled meanwhile: its requests and outputs pass through this process. Frozen objects
are never scanned again; whatever is allocated afterwards is collected as before. vLLM freezes its
own engine core's heap the same way; this is for the processes labrl owns.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap(owner: str) -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen now (all
    freezes of the process so far). Call when an actor has finished starting up."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: %d start-up objects left out of garbage-collection scans", owner, frozen)
    return frozen
