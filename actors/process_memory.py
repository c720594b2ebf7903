"""Peak resident memory of processes, from the kernel's high-water marks (Linux `/proc`)."""

from __future__ import annotations


def process_tree_peak_bytes(pid: int | None = None) -> int:
    """Peak resident memory of a process and its live children (vLLM's engine core runs in one),
    summed: each one's VmHWM, the kernel's high-water mark, so a peak between two reads counts."""
    import psutil

    root = psutil.Process(pid)
    return sum(process_peak_bytes(proc.pid) for proc in [root, *root.children(recursive=True)])


def process_peak_bytes(pid: int) -> int:
    """One process's VmHWM in bytes; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), 0)
    except OSError:  # exited since it was listed
        return 0
