"""Keep freed host memory inside a CPU trainer rank's process (glibc malloc).

glibc gives every block above its mmap threshold (at most 32 MiB) a mapping of its own and unmaps
it on `free`, and trims the top of the heap back to the kernel once 128 KiB are free there. A CPU
training step allocates and frees the same activations, gradients and GEMM outputs every step (a
30M model's MLP activations are 38 MB blocks), so each step faulted all of those pages in again,
and the kernel zeroes each one first: on a 2-core Intel Xeon VM a first touch cost 1.8 us per 4 KiB
page, and a 30M rank beside its engine faulted 36,000 pages a second (~7% of its core). With mmap
off and trimming raised, freed blocks stay in the heap and the next step reuses them, mapped.

The price: the process's resident memory stays at its peak, which a rank reaches every step anyway.
(Engines were tried too: no measurable gain, so they keep glibc's defaults; benchmarks/README.md.)
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: up to 2 GiB of free heap top is kept


def keep_freed_memory() -> bool:
    """Turn glibc's mmap'd blocks and heap trimming off in this process. Returns False (changing
    nothing) where the allocator is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        logger.info("not glibc: the allocator keeps its own policy for freed memory")
        return False
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)):
        logger.warning("glibc's mallopt refused the settings: freed memory still goes back to the kernel")
        return False
    return True
