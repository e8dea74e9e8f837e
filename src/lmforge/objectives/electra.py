"""Replaced token detection (ELECTRA).

    generator (small masked LM) fills the masked positions with samples -> corrupted input
    discriminator labels every token: original or replaced
    loss = generator MLM cross-entropy + disc_weight * discriminator binary cross-entropy

A masked LM learns from the 15% of tokens it predicts; the discriminator gets a loss on every
token, which is where ELECTRA's sample efficiency comes from. The model is
`lmforge.models.electra.ElectraModel`; its `discriminator` is the encoder to fine-tune.

Data and sampling: batches are `MaskedLMBatches` in mode "mlm" with ELECTRA's masking (see
`electra_masking`), plus one uniform number per masked position (`sample_u`), drawn in NumPy from
(seed, epoch, position, rank) like the masks. The generator's replacements are sampled from them
by inverse CDF, so they are a pure function of the batch: resume is exact, ranks differ, and the
fixed validation batches get the same replacements at every evaluation. No RNG is consumed.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.masking import MaskingConfig
from lmforge.errors import LmforgeError
from lmforge.models.electra import ElectraOutput
from lmforge.models.weights import unwrap
from lmforge.objectives.base import Objective, ObjectiveSetup
from lmforge.objectives.losses import output_layer_loss


@dataclass
class ElectraConfig:
    # Generator width as a fraction of the discriminator's (d_model, heads and d_ff scale together).
    generator_size: float = 0.25
    disc_weight: float = 50.0  # weight of the discriminator's loss against the generator's MLM loss
    # Sampling temperature of the generator's replacements (1 = its distribution as is, as in the paper).
    temperature: float = 1.0

    def validate(self) -> None:
        if not 0.0 < self.generator_size <= 1.0:
            raise LmforgeError(
                f"electra.generator_size={self.generator_size} must be in (0, 1]; the paper's best is 0.25 to 0.5"
            )
        if self.disc_weight <= 0:
            raise LmforgeError(f"electra.disc_weight={self.disc_weight} must be above 0 (the paper uses 50)")
        if self.temperature <= 0:
            raise LmforgeError(f"electra.temperature={self.temperature} must be above 0 (1 = no change)")


def electra_masking(mlm: MaskingConfig) -> MaskingConfig:
    """The masking ELECTRA trains with: `mlm.rate` of the tokens (and whole-word/span choices) as
    given, but every picked token becomes [MASK] (mask_prob 1, random_prob 0, as in the paper),
    unless mask_prob/random_prob were changed from BERT's 0.8/0.1 defaults, which are then used
    as given (the released ELECTRA code masks 85% and keeps 15%: --mlm.mask_prob 0.85
    --mlm.random_prob 0). They only shape the generator's input: the discriminator always sees
    the generator's samples at every picked position.
    """
    defaults = MaskingConfig()
    if (mlm.mask_prob, mlm.random_prob) == (defaults.mask_prob, defaults.random_prob):
        return dataclasses.replace(mlm, mask_prob=1.0, random_prob=0.0)
    return mlm


def discriminator_loss(out: ElectraOutput) -> torch.Tensor:
    """Mean binary cross-entropy of the replaced-token logits over the real (non-padding) tokens."""
    per_token = F.binary_cross_entropy_with_logits(out.disc_logits, out.replaced.float(), reduction="none")
    if out.real is None:
        return per_token.mean()
    return (per_token * out.real).sum() / out.real.sum().clamp(min=1)


def electra_loss(
    model: nn.Module, batch: dict[str, Any], *, disc_weight: float = 50.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """gen_loss + disc_weight * disc_loss, and metrics (0-d tensors, no host sync).

    gen_loss is the generator's masked-LM cross-entropy (its head fused with the loss in training),
    disc_loss the discriminator's mean binary cross-entropy over the real tokens.
    Metrics: `gen_loss`, `disc_loss`, `disc_acc` (over real tokens) always; in eval mode also
    `gen_acc` (generator top-1 at the masked positions, needs the logits training never keeps) and
    `replaced_recall` (share of the replaced tokens the discriminator flags).
    """
    out = model(
        batch["input_ids"], mlm_positions=batch["mlm_positions"], mlm_targets=batch["mlm_targets"],
        sample_u=batch.get("sample_u"), token_type_ids=batch.get("token_type_ids"),
        attention_mask=batch.get("attention_mask"),
    )  # fmt: skip
    targets = batch["mlm_targets"]
    head = unwrap(model).generator.output_layer()
    training = unwrap(model).training
    if training:
        gen_loss = output_layer_loss(out.gen_features, head, targets)
    else:
        gen_logits = head.logits(out.gen_features).float()  # (N, vocab)
        gen_loss = F.cross_entropy(gen_logits, targets)
    disc_loss = discriminator_loss(out)
    flagged = out.disc_logits > 0  # (B, T)
    correct = flagged == out.replaced
    if out.real is None:
        disc_acc = correct.float().mean()
    else:
        disc_acc = (correct & out.real).sum().float() / out.real.sum().clamp(min=1)
    metrics = {"gen_loss": gen_loss.detach(), "disc_loss": disc_loss.detach(), "disc_acc": disc_acc}
    if not training:
        metrics["gen_acc"] = (gen_logits.argmax(-1) == targets).float().mean()
        # Replaced tokens are masked positions, which are never padding.
        metrics["replaced_recall"] = (flagged & out.replaced).sum().float() / out.replaced.sum().clamp(min=1)
    return gen_loss + disc_weight * disc_loss, metrics


def setup(cfg: Any, shards: Any, seq_len: int, dist: Any, device: torch.device) -> ObjectiveSetup:
    """ElectraModel, masked-LM batches with sampling uniforms, and fixed validation batches."""
    from lmforge.data.electra_batches import ElectraBatches
    from lmforge.data.mlm_batches import MaskedLMBatches
    from lmforge.models.electra import ElectraModel

    tcfg, ecfg = cfg.train, cfg.electra
    ecfg.validate()
    model = ElectraModel(cfg.model, ecfg.generator_size, ecfg.temperature)
    for p in model.unused_parameters():  # keep DDP from waiting for gradients that never come
        p.requires_grad_(False)
    masking = electra_masking(cfg.mlm)
    tokenizer = shards.tokenizer()
    common = {"mode": "mlm", "masking": masking, "eos_id": shards.eos_id, "seed": tcfg.seed, "device": device}
    inner = MaskedLMBatches(
        shards.tokens("train"), shards.doc_offsets("train"), tokenizer, seq_len, tcfg.batch_size,
        rank=dist.rank, world_size=dist.world_size, **common,
    )  # fmt: skip
    batches = ElectraBatches(inner, tcfg.seed, dist.rank)
    val_batches = None
    if shards.num_tokens("val") > 1:
        try:
            val_src = ElectraBatches(
                MaskedLMBatches(
                    shards.tokens("val"), shards.doc_offsets("val"), tokenizer, seq_len, tcfg.batch_size,
                    name="val", drop_last=False, rank=dist.rank, world_size=dist.world_size, **common,
                ),
                tcfg.seed,
                dist.rank,
            )  # fmt: skip
        except LmforgeError as e:
            print(f"no validation: {e}", file=sys.stderr)
        else:

            def val_batches() -> Any:
                return val_src.eval_batches(tcfg.eval_batches)

    flops = model.flops_per_token(seq_len, predicted_fraction=masking.rate)
    loss = functools.partial(electra_loss, disc_weight=cfg.electra.disc_weight)
    figures = ("loss", "gen_loss", "disc_loss", "disc_acc", "gen_acc", "replaced_recall")
    return ObjectiveSetup(model, batches, val_batches, Objective("electra", loss, figures=figures), flops)


__all__ = ["ElectraConfig", "discriminator_loss", "electra_loss", "electra_masking", "setup"]
