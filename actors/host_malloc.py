"""Keep freed host memory inside the process (glibc malloc), for CPU trainer ranks and engines.

glibc hands every block above its mmap threshold (at most 32 MiB) to its own `mmap` and unmaps it
on `free`, and trims the top of the heap back to the kernel once 128 KiB are free there. A CPU
training step allocates and frees the same activations, gradients and GEMM outputs every step, so
each step faults all of those pages in again, and the kernel zeroes each one first: on this 2-core
Intel Xeon VM a first touch costs 1.8 us per 4 KiB page (2 GB/s), and a 30M trainer rank beside
its engine faulted 36,000 pages a second (~7% of its core). With mmap off and trimming raised,
freed blocks stay in the heap and the next step reuses them already mapped.

The price: a process's resident memory stays at its peak (nothing is returned until it exits).
Trainer ranks and engines reach that peak every step anyway.

`keep_freed_memory` sets the current process through `mallopt` and exports the same settings as
glibc's environment variables, so processes it starts afterwards (vLLM's engine core) start with them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free heap top kept up to 2 GiB
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Turn glibc's mmap allocations and heap trimming off in this process and its future children.
    Returns False (and changes nothing) where the allocator is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        logger.info("not glibc: the allocator keeps its own policy for freed memory")
        return False
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)):
        logger.warning("glibc's mallopt refused the settings: freed memory still goes back to the kernel")
        return False
    os.environ.update(ENV)
    return True
