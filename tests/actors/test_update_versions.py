"""An engine takes only newer policy versions, except the one it was told to accept once (a trainer
restored from an older checkpoint, or a sync repeated after another engine died in it)."""

import pytest

from actors.generation_control import UpdateState


def test_an_engine_refuses_versions_that_are_not_newer():
    state = UpdateState("gen0")
    state.check_can_update(current=3, new=4)
    with pytest.raises(ValueError, match="update to version 3 is not newer than the served version 3"):
        state.check_can_update(current=3, new=3)


def test_an_accepted_older_or_equal_version_passes_once():
    state = UpdateState("gen0")
    state.accepted = 1
    with pytest.raises(ValueError, match="version 2 is not newer"):  # only the accepted one
        state.check_can_update(current=5, new=2)
    state.check_can_update(current=5, new=1)
    with pytest.raises(ValueError, match="version 1 is not newer"):  # consumed
        state.check_can_update(current=5, new=1)
