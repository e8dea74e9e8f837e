import numpy as np
import pytest

from lmforge.data.batches import CausalLMBatches, eval_windows
from lmforge.errors import LmforgeError


def test_targets_are_inputs_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = CausalLMBatches(tokens, 16, 4, seed=1).next_batch()
    assert x.shape == (4, 16) and (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()


def test_epoch_visits_every_window_once():
    tokens = np.arange(16 * 20 + 1, dtype=np.uint16)
    b = CausalLMBatches(tokens, 16, 5, seed=3)
    starts = sorted(int(s) for _ in range(4) for s in b.next_batch()[0][:, 0])
    assert starts == list(range(0, 320, 16))
    assert b.state.epoch == 0 and b.state.position == 20
    b.next_batch()
    assert b.state.epoch == 1  # rolled over into a new, shifted epoch


def test_resume_from_state_gives_identical_batches():
    tokens = np.random.default_rng(0).integers(0, 500, 5000).astype(np.uint16)
    a = CausalLMBatches(tokens, 32, 4, seed=7)
    for _ in range(13):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(30)]
    b = CausalLMBatches(tokens, 32, 4, seed=7)
    b.load_state_dict(state)
    assert all((e == b.next_batch()[0]).all() for e in expected)


def test_ranks_read_disjoint_slices_of_the_global_batch():
    tokens = np.arange(64 * 8 + 1, dtype=np.uint16)
    r0 = CausalLMBatches(tokens, 8, 4, seed=2, rank=0, world_size=2)
    r1 = CausalLMBatches(tokens, 8, 4, seed=2, rank=1, world_size=2)
    single = CausalLMBatches(tokens, 8, 8, seed=2)
    both = np.concatenate([r0.next_batch()[0].numpy(), r1.next_batch()[0].numpy()])
    assert (both == single.next_batch()[0].numpy()).all()


def test_too_little_data_is_a_clear_error():
    with pytest.raises(LmforgeError, match=r"lower \-\-train\.batch_size"):
        CausalLMBatches(np.arange(50, dtype=np.uint16), 16, 8)


def test_eval_windows_are_fixed_and_cover_short_splits():
    tokens = np.arange(100, dtype=np.uint16)
    w1 = [x.clone() for x, _ in eval_windows(tokens, 16, 2, 10)]
    w2 = [x for x, _ in eval_windows(tokens, 16, 2, 10)]
    assert all((a == b).all() for a, b in zip(w1, w2)) and sum(len(x) for x in w1) == 6
    short = list(eval_windows(np.arange(5, dtype=np.uint16), 16, 2, 10))
    assert short[0][0].shape == (1, 4)
