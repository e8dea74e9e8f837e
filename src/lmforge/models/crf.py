"""A linear-chain CRF for token classification (NER), with optional IOB2 transition constraints.

A per-token softmax tagger scores every position alone, so it can emit `O I-PER` or `B-LOC I-PER`;
a CRF adds learned tag-to-tag transition scores and trains on whole sequences (the gold path's
log-probability among all paths), and Viterbi then returns the best *sequence*. Constraints forbid
IOB2-invalid transitions outright with a fixed large negative score, so decode never produces them.

Everything runs in float32 with autocast disabled: the forward algorithm sums L terms in log space,
and bf16's 8-bit mantissa would make the partition function (and so the loss) visibly wrong.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.errors import LmforgeError

# Score added to a forbidden transition. Finite rather than -inf so that a gold path through a
# forbidden transition gives a huge but finite loss (and finite gradients) instead of inf/NaN, and a
# sequence whose every path is forbidden still has a finite partition function.
DISALLOWED_SCORE = -10_000.0


def _parse_iob2(label: str) -> tuple[str, str | None]:
    if label == "O":
        return "O", None
    prefix, sep, typ = label.partition("-")
    if prefix not in ("B", "I") or not sep or not typ:
        raise LmforgeError(
            f"label '{label}' is not IOB2 (O, B-X or I-X); convert the tags with "
            "lmforge.tasks.readers.to_iob2 or build the CRF without constraints"
        )
    return prefix, typ


def iob2_allowed(labels: list[str]) -> tuple[Tensor, Tensor]:
    """Allowed transitions (K, K) and allowed start tags (K,) for an IOB2 label list.

    `allowed[i, j]` says whether tag j may follow tag i. The only rule in IOB2 is that `I-X` continues
    an X chunk: it may follow `B-X` or `I-X`, and may not start a sentence or follow `O` or another
    type's tag. Every tag may end a sentence, so there is no end mask.
    """
    parsed = [_parse_iob2(label) for label in labels]
    k = len(parsed)
    allowed = torch.ones(k, k, dtype=torch.bool)
    start = torch.ones(k, dtype=torch.bool)
    for j, (prefix_j, type_j) in enumerate(parsed):
        if prefix_j != "I":
            continue
        start[j] = False
        for i, (_, type_i) in enumerate(parsed):
            allowed[i, j] = type_i == type_j  # B-X or I-X; O has type None
    return allowed, start


class CRF(nn.Module):
    """Linear-chain CRF over K tags: `nll` for training, `decode` (Viterbi) for prediction.

    Scores are `start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_last]`.
    Parameters start at zero, not random: an untrained CRF then adds nothing, so decode equals the
    per-token argmax of the emissions (a CRF head put on a trained tagger does not perturb it), init
    consumes no RNG (other layers' init is unchanged by adding it), and emissions already break the
    symmetry between tags, so zeros train fine.

    `allowed` (K, K) / `allowed_start` (K,) are bool masks (see `iob2_allowed`); forbidden entries get
    `DISALLOWED_SCORE` through non-learned buffers that are saved in the state dict, so a checkpoint
    carries its constraints.
    """

    def __init__(self, num_tags: int, allowed: Tensor | None = None, allowed_start: Tensor | None = None):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        self.register_buffer("transition_penalty", self._penalty(allowed, (num_tags, num_tags), "allowed"))
        self.register_buffer("start_penalty", self._penalty(allowed_start, (num_tags,), "allowed_start"))

    @classmethod
    def for_iob2(cls, labels: list[str]) -> CRF:
        """A CRF over `labels` (index = tag id) with the IOB2 constraints of `iob2_allowed`."""
        allowed, start = iob2_allowed(labels)
        return cls(len(labels), allowed=allowed, allowed_start=start)

    @staticmethod
    def _penalty(mask: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor:
        if mask is None:
            return torch.zeros(shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
        return torch.where(mask.bool(), 0.0, DISALLOWED_SCORE).float()

    def extra_repr(self) -> str:
        constrained = bool(self.transition_penalty.any() or self.start_penalty.any())
        return f"num_tags={self.num_tags}, constrained={constrained}"

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """Effective (start, transitions, end) in float32, penalties included."""
        return (
            self.start_transitions.float() + self.start_penalty,
            self.transitions.float() + self.transition_penalty,
            self.end_transitions.float(),
        )

    def _check(self, emissions: Tensor, mask: Tensor, tags: Tensor | None = None) -> None:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise ValueError(f"emissions must be (B, L, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool (B, L) = {tuple(emissions.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if tags is not None and tags.shape != mask.shape:
            raise ValueError(f"tags must be (B, L) = {tuple(mask.shape)}, got {tuple(tags.shape)}")
        # The recursions and the backtrack assume each row is n_b valid positions then padding.
        # Checking the values reads the mask on the host, so it is done only where that costs no
        # device sync (CPU); on an accelerator, inside the training step, the caller vouches for it.
        if emissions.shape[1] == 0:
            raise ValueError("emissions have no positions; every row needs at least one")
        if mask.device.type == "cpu" and (not mask[:, 0].all() or (mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError(
                "mask must be a prefix mask with at least one True per row; for first-subword labels, "
                "gather those positions into a packed (B, n_words, K) tensor first"
            )

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood (B,) of each gold tag sequence: log Z - score(gold).

        emissions (B, L, K) float, tags (B, L) long, mask (B, L) bool prefix mask. Tags at masked
        positions are ignored (any value, e.g. -100). Returns float32 even under bf16 autocast.
        """
        self._check(emissions, mask, tags)
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            em = emissions.float()
            start, trans, end = self._scores()
            return self._log_partition(em, mask, start, trans, end) - self._gold_score(
                em, tags, mask, start, trans, end
            )

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> Tensor:
        """The loss: `nll` averaged ("mean", per sequence) or summed over the batch, or "none" (B,)."""
        nll = self.nll(emissions, tags, mask)
        if reduction == "mean":
            return nll.mean()
        if reduction == "sum":
            return nll.sum()
        if reduction == "none":
            return nll
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")

    @staticmethod
    def _gold_score(
        em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
    ) -> Tensor:
        tags = tags.masked_fill(~mask, 0)  # padding may be -100: make it a safe index, then mask it out
        valid = mask.float()
        emit = em.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, L)
        step = trans[tags[:, :-1], tags[:, 1:]]  # (B, L-1): transition into position t from t-1
        lengths = mask.sum(1)
        last = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
        return start[tags[:, 0]] + (emit * valid).sum(1) + (step * valid[:, 1:]).sum(1) + end[last]

    @staticmethod
    def _log_partition(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> Tensor:
        alpha = start + em[:, 0]  # (B, K): log-sum of all prefixes ending in each tag
        for t in range(1, em.shape[1]):
            # (B, K_prev, 1) + (K_prev, K_next) -> logsumexp over K_prev, + emissions of position t
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + em[:, t]
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)  # padding carries alpha through
        return torch.logsumexp(alpha + end, dim=1)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Viterbi best tag path (B, L) long, -1 at masked positions."""
        self._check(emissions, mask)
        with torch.autocast(device_type=emissions.device.type, enabled=False):
            em = emissions.float()
            start, trans, end = self._scores()
            score = start + em[:, 0]
            backpointers = []  # backpointers[t-1][b, j]: best previous tag when tag j is at position t
            for t in range(1, em.shape[1]):
                best, prev = (score.unsqueeze(2) + trans).max(dim=1)
                backpointers.append(prev)
                score = torch.where(mask[:, t : t + 1], best + em[:, t], score)
            cur = (score + end).argmax(dim=1)  # (B,) best tag at each row's last valid position
            path = torch.full(mask.shape, -1, dtype=torch.long, device=em.device)
            # Walk back over all rows at once: past a row's end `cur` stays its last tag; from its last
            # valid position down, write it and follow the back-pointers.
            for t in range(em.shape[1] - 1, -1, -1):
                valid = mask[:, t]
                path[:, t] = torch.where(valid, cur, -1)
                if t > 0:
                    prev = backpointers[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                    cur = torch.where(valid, prev, cur)
            return path
