"""The decoder cache's in-place beam reorder against a plain gather of the rows."""

from __future__ import annotations

import itertools

import torch

from t5kit.model import DecoderCache


def _cache(rows: int, length: int, layers: int = 2, beams: int = 2) -> DecoderCache:
    g = torch.Generator().manual_seed(rows * 100 + length)
    items = rows // beams
    cross = [torch.randn(items, 3, 5, 4, generator=g) for _ in range(layers)]
    cache = DecoderCache.allocate(cross, cross, torch.zeros(items, 1, 1, 5), [torch.zeros(3, 6)], max_length=6)
    cache = cache.expand_beams(beams)
    assert cache.self_kv.shape[1] == rows
    cache.self_kv.copy_(torch.randn(cache.self_kv.shape, generator=g))
    cache.length = length
    return cache


def test_in_place_reorder_equals_a_gather_of_the_rows():
    """Every reordering of 4 rows with repeats (chains, cycles such as swaps, fan-out), and a batch that
    shrinks (an item leaving): the filled positions equal index_select of the old rows; each layer's views
    see them."""
    cases = [list(order) for order in itertools.product(range(4), repeat=4)]
    cases += [[3, 2], [2, 3], [1, 0]]  # the last item's beams go on, in either order; the first item's swap
    for order in cases:
        cache = _cache(4, length=3)
        expected = cache.self_kv[:, :, :, :3].index_select(1, torch.tensor(order)).clone()
        items = None if len(order) == 4 else torch.tensor([1 if order[0] >= 2 else 0])
        cache.reorder_beams(torch.tensor(order), items)
        assert torch.equal(cache.self_kv[:, :, :, :3], expected), order
        assert cache.batch_size == len(order)
        for layer in range(2):
            assert torch.equal(cache.self_k[layer][:, :, :3], expected[2 * layer])
            assert torch.equal(cache.self_v[layer][:, :, :3], expected[2 * layer + 1])


def test_reorder_of_an_empty_cache_copies_nothing_and_keeps_its_rows():
    cache = _cache(4, length=0)
    before = cache.self_kv.clone()
    cache.reorder_beams(torch.tensor([1, 1, 2, 2]))
    assert torch.equal(cache.self_kv, before) and cache.spare is None
