"""actors/gc_heap.py: start-up objects leave the collector's scans; later ones are still collected."""

import gc

from actors.gc_heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_and_later_cycles_still_collected():
    startup = [_Node() for _ in range(100)]
    try:
        frozen = freeze_startup_heap("test")
        assert frozen >= len(startup) and gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(node) in tracked for node in startup)  # no full collection walks them again

        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a reference cycle made after start-up
        del a, b
        assert gc.collect() >= 2  # the cycle is found and freed as before
    finally:
        gc.unfreeze()
