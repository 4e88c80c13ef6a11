import torch

from calmdown import allocator


def test_large_arrays_nests_and_gives_the_same_results():
    x = torch.arange(3_000_000, dtype=torch.float32).reshape(300, 100, 100)
    expected = (x * 2).sum(dim=0)
    with allocator.large_arrays():
        with allocator.large_arrays():
            inner = (x * 2).sum(dim=0)
            assert allocator._depth == 2
        after_inner = (x * 2).sum(dim=0)
        assert allocator._depth == 1
    allocator.release_freed_memory()
    assert allocator._depth == 0
    assert torch.equal(inner, expected) and torch.equal(after_inner, expected)


def test_settings_come_back_when_a_run_fails():
    try:
        with allocator.large_arrays():
            raise RuntimeError("a failing run")
    except RuntimeError:
        pass
    assert allocator._depth == 0
