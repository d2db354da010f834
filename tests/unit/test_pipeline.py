"""Which calls the coordinator may fuse without changing what the centers compute."""

from suanwang.runtime.config import DilocoStrategy, StreamingStrategy, SyncStrategy
from suanwang.runtime.coordinator import contribution_with_work


def test_contribution_joins_the_work_unless_the_previous_result_lands_in_between():
    assert contribution_with_work(SyncStrategy(kind="sync"))
    assert contribution_with_work(DilocoStrategy(kind="diloco"))
    assert contribution_with_work(StreamingStrategy(kind="streaming", inner_steps=6, fragments=3, overlap=1))
    assert contribution_with_work(StreamingStrategy(kind="streaming", inner_steps=6, fragments=1, overlap=0))
    # one fragment under overlap: apply(r) changes the very fragment round r+1 sends
    assert not contribution_with_work(StreamingStrategy(kind="streaming", inner_steps=6, fragments=1, overlap=1))
