"""CRF against brute-force enumeration of every tag path on tiny cases, plus constraints and training."""

from __future__ import annotations

import itertools

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.models.crf import CRF, iob2_allowed

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _random_crf(k: int, seed: int, allowed=None, allowed_start=None) -> CRF:
    """Non-zero parameters, so transitions/start/end all matter in the comparisons."""
    crf = CRF(k, allowed=allowed, allowed_start=allowed_start)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return crf


def _path_scores(crf: CRF, em: torch.Tensor, n: int) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every path of length n over the first n positions of em (L, K), and its score (float64)."""
    start = (crf.start_transitions + crf.start_penalty).double()
    trans = (crf.transitions + crf.transition_penalty).double()
    end = crf.end_transitions.double()
    em = em.double()
    paths = list(itertools.product(range(crf.num_tags), repeat=n))
    scores = []
    for p in paths:
        s = start[p[0]] + end[p[-1]] + sum(em[t, p[t]] for t in range(n))
        s = s + sum(trans[p[t - 1], p[t]] for t in range(1, n))
        scores.append(s)
    return paths, torch.stack(scores)


def _batch(seed: int, k: int = 3, lengths=(4, 2, 1, 3)):
    g = torch.Generator().manual_seed(seed)
    b, length = len(lengths), max(lengths)
    emissions = torch.randn(b, length, k, generator=g) * 2
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    tags = torch.randint(0, k, (b, length), generator=g).masked_fill(~mask, -100)
    return emissions, tags, mask


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_equals_brute_force(seed, constrained):
    allowed = start = None
    if constrained:  # an arbitrary constraint set: 1 cannot follow 0, 2 cannot start
        allowed = torch.ones(3, 3, dtype=torch.bool)
        allowed[0, 1] = False
        start = torch.tensor([True, True, False])
    crf = _random_crf(3, seed, allowed, start)
    emissions, tags, mask = _batch(seed)
    nll = crf.nll(emissions, tags, mask)
    assert nll.shape == (4,) and nll.dtype == torch.float32
    for b, n in enumerate(mask.sum(1).tolist()):
        paths, scores = _path_scores(crf, emissions[b], n)
        gold = paths.index(tuple(tags[b, :n].tolist()))
        expected = -torch.log_softmax(scores, 0)[gold]
        assert nll[b].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)
    assert crf(emissions, tags, mask).item() == pytest.approx(nll.mean().item(), rel=1e-6)
    assert crf(emissions, tags, mask, reduction="sum").item() == pytest.approx(nll.sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        crf(emissions, tags, mask, reduction="max")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_viterbi_equals_brute_force_argmax(seed):
    crf = _random_crf(3, seed + 10)
    emissions, _, mask = _batch(seed)
    path = crf.decode(emissions, mask)
    assert path.dtype == torch.long and path.shape == mask.shape
    for b, n in enumerate(mask.sum(1).tolist()):
        paths, scores = _path_scores(crf, emissions[b], n)
        assert path[b, :n].tolist() == list(paths[int(scores.argmax())])
        assert (path[b, n:] == -1).all()


def test_padding_does_not_change_results():
    crf = _random_crf(3, 5)
    emissions, tags, mask = _batch(7)
    nll, path = crf.nll(emissions, tags, mask), crf.decode(emissions, mask)
    # Garbage emissions and other tag values in the padding: same answers.
    noisy = emissions.masked_fill(~mask[..., None], 1e3)
    other_tags = tags.masked_fill(~mask, 2)
    torch.testing.assert_close(crf.nll(noisy, other_tags, mask), nll)
    assert torch.equal(crf.decode(noisy, mask), path)
    # Each row alone, unpadded, and with extra padding: same answers.
    for b, n in enumerate(mask.sum(1).tolist()):
        one = torch.ones(1, n, dtype=torch.bool)
        torch.testing.assert_close(
            crf.nll(emissions[b : b + 1, :n], tags[b : b + 1, :n], one), nll[b : b + 1]
        )
        assert torch.equal(crf.decode(emissions[b : b + 1, :n], one), path[b : b + 1, :n])
    wide = torch.nn.functional.pad(emissions, (0, 0, 0, 3))
    wide_mask = torch.nn.functional.pad(mask, (0, 3))
    wide_tags = torch.nn.functional.pad(tags, (0, 3), value=-100)
    torch.testing.assert_close(crf.nll(wide, wide_tags, wide_mask), nll)
    assert torch.equal(crf.decode(wide, wide_mask)[:, : mask.shape[1]], path)


def test_iob2_allowed_table():
    allowed, start = iob2_allowed(LABELS)
    assert start.tolist() == [True, True, False, True, False]
    # rows: from O, B-PER, I-PER, B-LOC, I-LOC; columns: to the same
    assert allowed.int().tolist() == [
        [1, 1, 0, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
    ]
    with pytest.raises(LmforgeError, match="S-PER"):
        iob2_allowed(["O", "S-PER"])


def test_constraints_in_decode_and_nll():
    crf = CRF.for_iob2(LABELS)
    allowed, start = iob2_allowed(LABELS)
    g = torch.Generator().manual_seed(0)
    emissions = torch.randn(64, 6, 5, generator=g) * 3
    emissions[..., [2, 4]] += 2  # push towards I- tags, which the constraints must still reject
    mask = torch.arange(6)[None, :] < torch.randint(1, 7, (64, 1), generator=g)
    path = crf.decode(emissions, mask)
    assert (emissions.argmax(-1)[mask] != path[mask]).any()  # the constraints did change something
    for row, m in zip(path.tolist(), mask.tolist()):
        tags = row[: sum(m)]
        assert start[tags[0]]
        assert all(allowed[a, b] for a, b in itertools.pairwise(tags))

    em = torch.zeros(1, 2, 5)
    ok = crf.nll(em, torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool))  # B-PER I-PER
    bad = crf.nll(em, torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.bool))  # O I-PER
    bad_start = crf.nll(em[:, :1], torch.tensor([[4]]), torch.ones(1, 1, dtype=torch.bool))  # I-LOC
    assert ok.item() < 5 and bad.item() > 1e3 and bad_start.item() > 1e3
    assert torch.isfinite(bad).all()
    # Penalties are buffers (saved, not trained), parameters start at zero.
    assert {n for n, _ in crf.named_parameters()} == {"transitions", "start_transitions", "end_transitions"}
    assert "transition_penalty" in crf.state_dict()
    assert all((p == 0).all() for p in crf.parameters())


def test_gradients_and_training_learns_transitions():
    # Gold tags follow the cycle 0 -> 1 -> 2 -> 0 from tag 0, and emissions carry no information, so
    # decode can only reproduce them through learned start and transition scores.
    torch.manual_seed(0)
    crf = CRF(3)
    lengths = torch.tensor([5, 3, 4, 1])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    tags = (torch.arange(5) % 3).expand(4, 5).masked_fill(~mask, -100)
    emissions = torch.zeros(4, 5, 3, requires_grad=True)
    crf(emissions, tags, mask).backward()
    assert emissions.grad is not None and emissions.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crf.parameters())
    assert (emissions.grad[~mask] == 0).all()

    opt = torch.optim.Adam(crf.parameters(), lr=0.1)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = crf(emissions.detach(), tags, mask)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < first / 2
    assert torch.equal(crf.decode(emissions.detach(), mask), tags.masked_fill(~mask, -1))


def test_bf16_autocast():
    crf = _random_crf(3, 3)
    _, tags, mask = _batch(4)
    proj = torch.nn.Linear(8, 3)
    x = torch.randn(4, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emissions = proj(x)
        assert emissions.dtype == torch.bfloat16
        nll = crf.nll(emissions, tags, mask)
        loss = crf(emissions, tags, mask)
        path = crf.decode(emissions, mask)
    assert nll.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll, crf.nll(emissions.float(), tags, mask))
    assert torch.equal(path, crf.decode(emissions.float(), mask))
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def test_bad_inputs():
    crf = CRF(3)
    emissions, tags, mask = _batch(0)
    with pytest.raises(ValueError, match="emissions"):
        crf.nll(emissions[..., :2], tags, mask)
    with pytest.raises(ValueError, match="prefix"):
        crf.decode(emissions, mask.flip(1))
    with pytest.raises(ValueError, match="allowed"):
        CRF(3, allowed=torch.ones(2, 2, dtype=torch.bool))
