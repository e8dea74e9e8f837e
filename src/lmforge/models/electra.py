"""ELECTRA: a small masked-LM generator and a replaced-token discriminator that share embeddings.

    ids with [MASK]s -> generator (an Encoder of width d_g) -> logits at the masked positions
                     -> sample a replacement for each (no gradient) -> corrupted ids
    corrupted ids    -> discriminator (an Encoder of width d) -> disc_head -> (B, T) "replaced?" logits

The discriminator is the model worth keeping: `ElectraModel.discriminator` is a complete `Encoder`
of `model.*` (its state dict is exactly `build_model(cfg)`'s), ready to fine-tune. The generator
only exists to make the discriminator's task hard, which is why it is narrow (a quarter of the
width by default; the paper found 1/4-1/2 best: a generator as strong as the discriminator makes
the task too hard to learn from).

Sharing, as in the paper: the token, position and segment embeddings and the embedding LayerNorm
(everything `Encoder.embed` uses) live in the discriminator and the generator reuses the same
modules, so both sides train them. The embeddings have the discriminator's width d (ELECTRA's
`embedding_size`); where the generator is narrower it reads them through `embed_proj`, a
Linear(d, d_g) (ELECTRA's `embeddings_project`). Its masked-LM head maps back the other way,
dense(d_g -> d) -> activation -> LayerNorm(d), so that the output projection is the shared token
embedding itself (as ELECTRA's `get_token_logits` and HF's ElectraGeneratorPredictions): one tied
matrix, whatever the widths. The generator is otherwise an ordinary `Encoder` with these modules
swapped in, so `generator(ids)`, `generator.mlm_logits` and `generator.output_layer()` work
unchanged (fill-mask, masked-LM evaluation and the objective's fused loss use them).

Parameter names (the safetensors keys): `discriminator.*` as an Encoder's, `disc_head.{dense,
dense_prediction}`, `generator.embed_proj`, `generator.blocks.{i}.*`, `generator.norm_f`
(pre-norm only), `generator.mlm_head.{dense,norm}`, `generator.mlm_bias`. The shared tensors are
stored once, under their `discriminator.` names (`lmforge.models.weights` drops the aliases).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.models.encoder import Encoder
from lmforge.models.layers import make_activation


def generator_config(cfg: ModelConfig, size: float) -> ModelConfig:
    """The generator's config: `cfg` with width, heads and MLP scaled by `size`, the same depth.

    Heads scale with the width so the head dimension stays the discriminator's where it can (BERT
    base at 1/4: 3 heads of 64, width 192), with at least one head; the width is rounded to a
    multiple of the heads (of twice the heads for RoPE, which needs an even head dimension).
    """
    if not 0.0 < size <= 1.0:
        raise LmforgeError(
            f"electra.generator_size={size} must be in (0, 1]: the generator's width as a fraction of the "
            "discriminator's (the paper's best: 0.25 to 0.5)"
        )
    heads = max(1, round(cfg.n_head * size))
    step = heads * (2 if cfg.position == "rope" else 1)
    width = max(step, round(cfg.d_model * size / step) * step)
    kv = None
    if cfg.n_kv_head is not None:  # grouped-query attention: scale the groups, keep them dividing the heads
        kv = max(1, min(heads, round(cfg.kv_heads * size)))
        while heads % kv:
            kv -= 1
    ff = max(1, round(cfg.ff_dim * size))
    return dataclasses.replace(cfg, d_model=width, n_head=heads, n_kv_head=kv, d_ff=ff, tie_embeddings=True)


class GeneratorHead(nn.Module):
    """The generator's prediction transform: dense (d_g -> d) -> activation -> LayerNorm(d).

    Same names as `MLMHead` (`dense`, `norm`), but it ends at the embedding width d, so the vocab
    projection can be the shared token embedding.
    """

    def __init__(self, cfg: ModelConfig, emb_dim: int):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, emb_dim)
        self.act = make_activation("gelu_tanh" if cfg.activation == "gelu_tanh" else "gelu")
        self.norm = nn.LayerNorm(emb_dim, eps=cfg.norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


class DiscriminatorHead(nn.Module):
    """Per-token replaced-or-original logit: dense -> activation -> Linear(d, 1), as HF's
    ElectraDiscriminatorPredictions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = make_activation("gelu_tanh" if cfg.activation == "gelu_tanh" else "gelu")
        self.dense_prediction = nn.Linear(cfg.d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) logits; > 0 means "replaced"."""
        return self.dense_prediction(self.act(self.dense(h))).squeeze(-1)


class ElectraGenerator(Encoder):
    """An `Encoder` of width d_g running on the discriminator's embeddings (see the module docstring).

    It is built as a plain Encoder of `cfg` and then given the shared embedding modules, the
    projection into its width, and a head that ties its output to the shared token embedding.
    The sentence-pair modules (`pooler`, `cls_head`) are removed: a generator has no use for them.
    """

    def __init__(self, cfg: ModelConfig, shared: Encoder):
        super().__init__(cfg)
        emb_dim = shared.config.d_model
        self.tok_emb = shared.tok_emb
        if shared.rope is None:  # learned (an nn.Embedding) or sinusoidal (a non-persistent buffer)
            self.pos_emb = shared.pos_emb
        self.type_emb = shared.type_emb
        self.emb_norm = shared.emb_norm
        self.embed_proj = nn.Linear(emb_dim, cfg.d_model) if emb_dim != cfg.d_model else nn.Identity()
        self.mlm_head = GeneratorHead(cfg, emb_dim)
        self.lm_head = nn.Linear(emb_dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = shared.tok_emb.weight
        del self.pooler, self.cls_head
        self.embed_proj.apply(self._init_weights)
        self.mlm_head.apply(self._init_weights)

    def embed(self, idx: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The shared embeddings (B, T, d), projected to the generator's width: (B, T, d_g)."""
        return self.embed_proj(super().embed(idx, token_type_ids))


class ElectraOutput(NamedTuple):
    """What one ELECTRA step computes (all on the device; nothing is synchronised with the host)."""

    gen_features: torch.Tensor  # (N, d) the generator's masked-LM head features at the masked positions
    disc_logits: torch.Tensor  # (B, T) float32, > 0 means "replaced"
    replaced: torch.Tensor  # (B, T) bool: the discriminator's labels (token differs from the original)
    real: torch.Tensor | None  # (B, T) bool: non-padding tokens; None when nothing is padded


def corrupt(
    ids: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, sampled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's input and labels.

    ids (B, T) is the generator's input (masked), positions (N,) flat indices of the masked
    tokens, targets (N,) their original ids, sampled (N,) the generator's replacements.
    Returns corrupted ids (B, T) (the original sequence with the samples at the masked positions)
    and labels (B, T) bool: True where the token differs from the original, so a sample that
    happens to equal the original counts as original (as in the paper).
    """
    original = ids.flatten().scatter(0, positions, targets)
    corrupted = original.scatter(0, positions, sampled)
    return corrupted.view_as(ids), (corrupted != original).view_as(ids)


def sample_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One token per row of logits (N, vocab) from softmax(logits / temperature), by inverse CDF.

    `u` (N,) are uniform numbers in [0, 1): row i gets the token whose cumulative-probability
    interval holds u[i]. Given from outside (see `lmforge.objectives.electra`), they make the
    samples a pure function of the batch, which keeps resume exact without touching any RNG.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(-1)  # (N, vocab), non-decreasing
    target = u.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]  # scale by the total: no rounding past the end
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.size(-1) - 1)


class ElectraModel(nn.Module):
    """Generator + discriminator with shared embeddings; `forward` is one pretraining step.

    `discriminator` is what to keep and fine-tune; `generator` is a small masked LM (usable for
    fill-mask). `temperature` is the generator's sampling temperature (1 in the paper).
    """

    def __init__(self, cfg: ModelConfig, generator_size: float = 0.25, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise LmforgeError(
                f"electra.temperature={temperature} must be above 0 (1 samples the generator as is)"
            )
        self.config = cfg
        self.generator_size, self.temperature = generator_size, temperature
        self.discriminator = Encoder(cfg)  # registered first: the shared tensors are saved under its names
        self.disc_head = DiscriminatorHead(cfg)
        self.disc_head.apply(self.discriminator._init_weights)
        self.generator = ElectraGenerator(generator_config(cfg, generator_size), self.discriminator)

    @classmethod
    def from_run_config(cls, cfg: ModelConfig, section: dict | None) -> ElectraModel:
        """The model of an ELECTRA run, from its model config and its saved `electra` section."""
        section = section or {}
        return cls(cfg, float(section.get("generator_size", 0.25)), float(section.get("temperature", 1.0)))

    def unused_parameters(self) -> list[nn.Parameter]:
        """The discriminator's heads that replaced-token detection never runs (sentence-pair pooler and
        head, masked-LM head; an untied vocab matrix): pretraining freezes them so DDP does not wait for
        their gradients. They stay in the weights, so `discriminator` loads as a plain Encoder."""
        d = self.discriminator
        params = [*d.pooler.parameters(), *d.cls_head.parameters(), *d.mlm_head.parameters(), d.mlm_bias]
        if d.lm_head.weight is not d.tok_emb.weight:
            params.append(d.lm_head.weight)
        return params

    def forward(
        self,
        idx: torch.Tensor,
        *,
        mlm_positions: torch.Tensor,
        mlm_targets: torch.Tensor,
        sample_u: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ElectraOutput:
        """One ELECTRA step on a masked batch (as `MaskedLMBatches` makes them).

        idx (B, T) masked ids, mlm_positions (N,) flat indices of the masked tokens, mlm_targets (N,)
        their original ids, sample_u (N,) uniform numbers for drawing the replacements (None: drawn
        from the global torch RNG). Gradients reach the generator only through its own masked-LM
        loss: the replacements are sampled token ids, through which nothing flows back.
        """
        gen = self.generator
        h = gen(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)  # (B, T, d_g)
        hm = gen.mlm_features(h, mlm_positions)  # (N, d)
        with torch.no_grad():
            logits = gen.output_layer().logits(hm)  # (N, vocab), for sampling only
            u = torch.rand(mlm_positions.shape, device=idx.device) if sample_u is None else sample_u
            sampled = sample_tokens(logits, u, self.temperature)  # (N,)
            corrupted, replaced = corrupt(idx, mlm_positions, mlm_targets, sampled)

        hd = self.discriminator(corrupted, token_type_ids=token_type_ids, attention_mask=attention_mask)
        disc_logits = self.disc_head(hd).float()  # (B, T)
        real = attention_mask.bool() if attention_mask is not None else None
        return ElectraOutput(hm, disc_logits, replaced, real)

    @torch.no_grad()
    def detect(
        self,
        idx: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replaced-token logits (B, T) of ids (B, T): > 0 where the discriminator thinks a token was
        replaced (for inspecting a trained run; pretraining goes through `forward`)."""
        h = self.discriminator(idx, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return self.disc_head(h).float()

    # ------------------------------------------------------------ counts

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, shared ones once; non_embedding drops the lookup tables as `Encoder.num_params`."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.discriminator.num_params() - self.discriminator.num_params(non_embedding=True)
        return n

    def flops_per_token(self, seq_len: int, predicted_fraction: float = 0.15) -> float:
        """Training FLOPs per input token, as `Encoder.flops_per_token` counts them.

        The generator: its backbone on every token, its vocab head on the masked
        `predicted_fraction`, plus one more forward of the vocab projection there to sample the
        replacements. The discriminator: its backbone and `disc_head` on every token; the heads
        it never runs in pretraining (`unused_parameters`) and the embedding lookups are free.
        """
        gen, disc, cfg = self.generator, self.discriminator, self.config
        sampling = 2.0 * gen.lm_head.weight.numel() * predicted_fraction
        tied = disc.lm_head.weight is disc.tok_emb.weight
        weights = (
            disc.num_params(non_embedding=True)
            - sum(p.numel() for p in self.unused_parameters())
            - (disc.tok_emb.weight.numel() if tied else 0)  # the tied vocab matrix: a lookup only
            + sum(p.numel() for p in self.disc_head.parameters())
        )
        attention = 12.0 * cfg.n_layer * cfg.d_model * seq_len
        return gen.flops_per_token(seq_len, predicted_fraction) + sampling + 6.0 * weights + attention


__all__ = [
    "DiscriminatorHead",
    "ElectraGenerator",
    "ElectraModel",
    "ElectraOutput",
    "GeneratorHead",
    "corrupt",
    "generator_config",
    "sample_tokens",
]
