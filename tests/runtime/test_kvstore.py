"""The K/V store batched runs keep their caches in (tempo_core/runtime/kvstore.py): a cache in a slot must give the
model exactly what a plain DynamicCache gives it, through forwards of its own, crops, and moving out of a slot it
outgrows; two runs' slots never touch each other. (Batched runs in the store against their solo runs:
tests/serving/test_batch.py, the `kv` fixture.)"""

import pytest
import torch
from tiny import tiny_llama
from transformers import DynamicCache

from tempo_core.runtime.kvstore import KVStore, SlotCache

pytestmark = pytest.mark.floor  # also run on the oldest transformers allowed (make test-floor)


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=0)


def forward(lm, cache, ids, start):
    with torch.inference_mode():
        out = lm.forward(input_ids=torch.tensor([ids]), position_ids=torch.arange(start, start + len(ids))[None],
                         cache=cache, use_cache=True)
    return out.logits[0]


def test_a_cache_in_a_slot_gives_the_logits_of_a_dynamic_cache(lm):
    store = KVStore(lm.model.config, 2, 24, torch.float32, lm.device)
    slotted, plain = store.cache(), DynamicCache(config=lm.model.config)
    assert isinstance(slotted, SlotCache) and store.free_slots == 1
    prompt = [5, 17, 3, 99, 42, 7, 8, 1]
    feeds = [(prompt, 0), ([11], 8), ([12, 13], 9), ([14], 11)]
    for ids, start in feeds:
        torch.testing.assert_close(forward(lm, slotted, ids, start), forward(lm, plain, ids, start), rtol=0, atol=1e-5)
    assert slotted.get_seq_length() == plain.get_seq_length() == 12
    for a, b in zip(slotted.layers, plain.layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=0)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    slotted.crop(-2), plain.crop(-2)  # a pad row, or a set taken back
    torch.testing.assert_close(forward(lm, slotted, [20], 10), forward(lm, plain, [20], 10), rtol=0, atol=1e-5)
    # 11 rows now; a 16-row feed does not fit the slot's 24: the cache moves out and goes on the same
    more = list(range(30, 46))
    torch.testing.assert_close(forward(lm, slotted, more, 11), forward(lm, plain, more, 11), rtol=0, atol=1e-5)
    assert slotted.store is None and store.free_slots == 2
    assert slotted.get_seq_length() == plain.get_seq_length() == 27
    torch.testing.assert_close(forward(lm, slotted, [50], 27), forward(lm, plain, [50], 27), rtol=0, atol=1e-5)


def test_runs_in_neighbouring_slots_never_touch_each_other(lm):
    store = KVStore(lm.model.config, 3, 32, torch.float32, lm.device)
    a, b = store.cache(), store.cache()
    forward(lm, a, [1, 2, 3, 4], 0)
    before = [layer.keys.clone() for layer in a.layers]
    forward(lm, b, list(range(10, 30)), 0)  # longer than a: writes rows a never wrote, in its own slot
    for layer, kept in zip(a.layers, before):
        assert torch.equal(layer.keys, kept)
    assert a.get_seq_length() == 4 and b.get_seq_length() == 20
    a.close()
    assert store.free_slots == 2 and a.get_seq_length() == 0
    c = store.cache()  # a's slot again, empty: the rows a left there are not part of it
    assert c.slot == a.slot and c.get_seq_length() == 0 and c.layers[0].keys.shape[-2] == 0


def test_no_free_slot_gives_none_and_a_dropped_cache_gives_its_slot_back(lm):
    store = KVStore(lm.model.config, 1, 8, torch.float32, lm.device)
    cache = store.cache()
    assert store.cache() is None
    del cache  # a run dropped unfinished: its slot comes back at once (no reference cycle to wait for)
    assert store.free_slots == 1


def test_the_store_is_sized_by_the_environment_and_off_on_a_cpu_by_default(monkeypatch):
    from tempo_core.runtime.kvstore import kv_store, slot_cache
    lm = tiny_llama(seed=0)  # a fresh model: the store is made once per model
    monkeypatch.delenv("TEMPO_SHARED_KV_ROWS", raising=False)
    assert kv_store(lm) is None and type(slot_cache(lm)) is DynamicCache  # CPU default: off
    for rows, slots, want in [("64", "3", (3, 64)), ("0", "3", None), ("64", "many", (32, 64))]:
        lm = tiny_llama(seed=0)
        monkeypatch.setenv("TEMPO_SHARED_KV_ROWS", rows)
        monkeypatch.setenv("TEMPO_SHARED_KV_SLOTS", slots)  # not a whole number: logged, the default 32 kept
        store = kv_store(lm)
        assert (None if store is None else (store.slots, store.capacity)) == want
        if store:
            assert isinstance(slot_cache(lm), SlotCache)
            assert store.free_slots == store.slots  # that cache is gone, and its slot back
