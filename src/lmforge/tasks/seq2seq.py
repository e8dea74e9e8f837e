"""Sequence to sequence: translation and summarisation with an encoder-decoder.

Examples are (source, target) pairs in any layout `lmforge.tasks.parallel` reads: two line-aligned
files (`train.en,train.de`), TSV, or JSONL with `src_field` / `tgt_field` (and `ref_field` for
references other than the target). Both sides are encoded with the run's one tokenizer (a joint
vocabulary), or the sources with a tokenizer of their own (`--src_tokenizer`: two vocabularies,
the encoder's embedding sized by the source one), and each ends in its end-of-text token; the decoder starts from its padding token (Marian's
and T5's convention; the end-of-text token where there is no padding token). The loss is
teacher-forced cross-entropy with label smoothing, padding ignored. Dev scores and predictions
come from beam search (`lmforge.infer.beam`) over the whole file: sacreBLEU's BLEU (with its
signature) and chrF, and ROUGE-1/2/L/Lsum, each against all of a pair's references. Predictions
are one detokenised hypothesis per line, the file `sacrebleu REF -i HYP` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.infer.beam import BeamConfig, beam_search
from lmforge.infer.decoding import open_session
from lmforge.models.backbone import Backbone
from lmforge.models.heads import TaskModel
from lmforge.models.seq2seq import Seq2SeqTokens, seq2seq_tokens, shift_right
from lmforge.objectives.losses import linear_cross_entropy
from lmforge.tasks import metrics
from lmforge.tasks.framing import Specials
from lmforge.tasks.parallel import Pair, parallel_files, read_parallel
from lmforge.tasks.readers import LabelMap
from lmforge.tasks.spec import TaskData
from lmforge.text.corpus import read_lines
from lmforge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from lmforge.finetuning import FinetuneConfig


class Seq2SeqModel(TaskModel):
    """An encoder-decoder under the task workflow: teacher-forced features for the loss, beam
    search for predictions (`decode`). Its parameters are the backbone's: the output projection
    is the model's own `lm_head`, so the saved weights are an encoder-decoder run's, prefixed."""

    def __init__(self, backbone: Backbone, tokens: Seq2SeqTokens, *, label_smoothing: float,
                 beam: BeamConfig, max_new_tokens: int = 0) -> None:  # fmt: skip
        super().__init__(backbone, 0.0)
        if backbone.arch != "encoder-decoder":
            raise LmforgeError(
                f"seq2seq needs an encoder-decoder model, not a {backbone.arch}; pretrain one with "
                "--model.arch encoder-decoder, or start from scratch with --from_scratch true"
            )
        self.tokens, self.label_smoothing = tokens, label_smoothing
        self.beam, self.max_new_tokens = beam, max_new_tokens

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"features": the decoder's final hidden states (B, T, d)} for a batch with targets; {}
        without (prediction: `decode` does the work)."""
        if "target_ids" not in batch:
            return {}
        dec_in = shift_right(batch["target_ids"], self.tokens.start, self.tokens.pad)
        h = self.model(
            batch["input_ids"], dec_in, src_mask=batch.get("attention_mask"),
            token_index=batch.get("token_index"), features=True,
        )  # fmt: skip
        return {"features": h}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """Label-smoothed cross-entropy over the real target tokens, fused with the output layer."""
        head = self.model.output_layer()
        h = outputs["features"]
        return linear_cross_entropy(
            h.flatten(0, 1), head.weight, batch["target_ids"].flatten(), bias=head.bias,
            label_smoothing=self.label_smoothing,
        ), {}  # fmt: skip

    def new_tokens(self, source_len: int) -> int:
        """Tokens to generate at most: `max_new_tokens`, or (0) twice the source plus 10, within the
        decoder's positions (the start token takes one)."""
        limit = self.config.max_len - 1
        return min(self.max_new_tokens or 2 * source_len + 10, limit)

    @torch.no_grad()
    def generate(
        self, src: torch.Tensor, src_mask: torch.Tensor | None, beam: BeamConfig | None = None
    ) -> Any:
        """Beam search from source ids (B, S): a `BeamResult` (tokens (B, num_return, L))."""
        import dataclasses

        beam = beam or self.beam
        beam = dataclasses.replace(beam, max_new_tokens=self.new_tokens(src.size(1)))
        B = src.size(0)
        session = open_session(
            self.model, B, beam.max_new_tokens + 1, source=(src, src_mask), compiled=beam.compile
        )
        start = torch.full((B, 1), self.tokens.start, dtype=torch.long, device=src.device)
        first = session.prefill(start)
        return beam_search(
            session, first, beam, eos_id=self.tokens.eos, pad_id=self.tokens.pad, history=start
        )

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"hyp": (B, L) the best hypothesis' ids, -1 after its end}."""
        was_training = self.training
        self.eval()
        try:
            result = self.generate(batch["input_ids"], batch.get("attention_mask"))
        finally:
            self.train(was_training)
        tokens, lengths = result.tokens[:, 0], result.lengths[:, 0]
        keep = torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None]
        return {"hyp": tokens.masked_fill(~keep, -1)}

    def flops_per_token(self, seq_len: int) -> float:
        return self.model.flops_per_token(seq_len)


class _Pairs(list):
    """Examples of a parallel file, and what reading it skipped (told to the user)."""

    notes: list[str]


def _read_pairs(cfg: FinetuneConfig, spec: str | Path) -> _Pairs:
    text = read_parallel(spec, src_field=cfg.src_field, tgt_field=cfg.tgt_field, ref_field=cfg.ref_field)
    pairs = _Pairs(text.pairs)
    pairs.notes = text.notes()
    return pairs


def _is_parallel(path: Path) -> bool:
    """Whether a file to translate carries targets: two files, JSONL, or tab-separated lines."""
    if len(parallel_files(path)) == 2 or path.suffix.lower() in (".jsonl", ".tsv"):
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    return "\t" in first


class Seq2SeqTask:
    """(source, target) pairs -> an encoder-decoder; BLEU, chrF and ROUGE of beam-search output."""

    summary = "translation / summarisation with an encoder-decoder (aligned files, TSV or JSONL pairs)"
    default_metric = "bleu"
    metrics = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
    options = ("src_field", "tgt_field", "ref_field", "label_smoothing", "beam", "length_penalty",
               "max_new_tokens", "no_repeat_ngram", "architecture", "tokenizer", "bleu_tokenize",
               "decoder_start", "src_tokenizer")  # fmt: skip
    label_key = "target_ids"
    length_sorted = True

    def read(self, cfg: FinetuneConfig, path: Path) -> list[Any]:
        return _read_pairs(cfg, path)

    def read_for_prediction(self, cfg: FinetuneConfig, path: Path) -> tuple[list[Any], bool]:
        """Parallel text (scored against its targets), or plain text: one source per line, blank
        lines kept (they get an empty translation, so output line i is input line i's)."""
        if _is_parallel(path):
            return _read_pairs(cfg, path), True
        lines = list(read_lines(path))
        if not any(line.strip() for line in lines):
            raise LmforgeError(f"{path}: no text to translate")
        return [Pair(line.strip(), "", i) for i, line in enumerate(lines, 1)], False

    def build_labels(self, examples: list[Any]) -> LabelMap:
        return LabelMap([])  # the vocabulary is the tokenizer's

    def featurize(
        self, cfg: FinetuneConfig, path: Path, examples: list[Any], tokenizer: Any, specials: Specials,
        labels: LabelMap, max_len: int, *, with_labels: bool = True, source_tokenizer: Any = None,
    ) -> TaskData:  # fmt: skip
        tokens = seq2seq_tokens(tokenizer)
        src_tok = source_tokenizer or tokenizer
        src_eos = src_tok.eos_id if source_tokenizer is not None else tokens.eos
        if src_eos is None:
            raise LmforgeError(
                "the source tokenizer has no end-of-text token, which every source ends in; use one trained "
                "with lmforge tokenizer train --kind bpe, unigram, word or char"
            )
        src = src_tok.encode_batch([p.src for p in examples])
        tgt = tokenizer.encode_batch([p.tgt for p in examples]) if with_labels else None
        cut_src = cut_tgt = 0
        features = []
        for i, s in enumerate(src):
            cut_src += len(s) > max_len - 1
            feat = {"input_ids": np.asarray([*s[: max_len - 1], src_eos], np.int64)}
            if tgt is not None:
                t = tgt[i]
                cut_tgt += len(t) > max_len - 1
                feat["target_ids"] = np.asarray([*t[: max_len - 1], tokens.eos], np.int64)
            features.append(feat)
        notes = list(getattr(examples, "notes", []))
        for side, n in (("sources", cut_src), ("targets", cut_tgt)):
            if n:
                notes.append(
                    f"{path}: {n} of {len(examples)} {side} cut to {max_len - 1} tokens (raise --max_len, "
                    "up to the model's max_len)"
                )
        return TaskData(path, examples, features, extra=tokenizer, notes=notes)

    def build_head(
        self, cfg: FinetuneConfig, backbone: Backbone, labels: LabelMap, class_weights: torch.Tensor | None,
        tokenizer: Any,
    ) -> nn.Module:  # fmt: skip
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise LmforgeError(
                f"--label_smoothing {cfg.label_smoothing}: use a value in [0, 1) (0.1 is usual)"
            )
        try:
            beam = BeamConfig(
                num_beams=cfg.beam, length_penalty=cfg.length_penalty, no_repeat_ngram_size=cfg.no_repeat_ngram,
                max_new_tokens=max(cfg.max_new_tokens, 1),
            )  # fmt: skip
        except ValueError as e:
            names = {"num_beams": "--beam", "no_repeat_ngram_size": "--no_repeat_ngram"}
            message = str(e)
            for field, flag in names.items():
                message = message.replace(field, flag)
            raise LmforgeError(message) from None
        if cfg.max_new_tokens < 0:
            raise LmforgeError(
                f"--max_new_tokens {cfg.max_new_tokens}: use a positive count, or 0 for 2 x source + 10"
            )
        return Seq2SeqModel(backbone, seq2seq_tokens(tokenizer, cfg.decoder_start), label_smoothing=cfg.label_smoothing,
                            beam=beam, max_new_tokens=cfg.max_new_tokens)  # fmt: skip

    def loss(self, model: nn.Module, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
        return model.loss(outputs, batch)

    def class_weight_key(self, cfg: FinetuneConfig) -> str | None:
        return None

    def score(self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap) -> dict[str, Any]:
        hyps = self._hypotheses(data, outputs)
        refs = [p.references for p in data.examples]  # several per pair for multi-reference sets
        b = metrics.bleu(hyps, refs, tokenize=cfg.bleu_tokenize)
        lc = metrics.bleu(hyps, refs, tokenize=cfg.bleu_tokenize, lowercase=True)
        c = metrics.chrf(hyps, refs)
        r = metrics.rouge(hyps, refs)
        found = {"bleu": b["bleu"], "chrf": c["chrf"], **r}
        report = {"bleu_signature": b["signature"], "chrf_signature": c["signature"], "bleu_detail": b["text"],
                  "bleu_lowercase": lc["bleu"], "bleu_lowercase_signature": lc["signature"]}  # fmt: skip
        text = (
            f"{b['text']}\nsignature: {b['signature']}\n"
            f"lowercased BLEU = {lc['bleu']:.2f}  ({lc['signature']})\n"
            f"chrF2 = {c['chrf']:.2f}  ({c['signature']})\n"
            + "  ".join(f"{k} {v:.2f}" for k, v in r.items())
            + "\n"
        )
        return {"metrics": found, "report": report, "report_text": text, "predictions": hyps}

    def write_predictions(
        self, cfg: FinetuneConfig, data: TaskData, outputs: dict, labels: LabelMap, out: Path | None,
        gold: bool,
    ) -> list[str]:  # fmt: skip
        """One detokenised hypothesis per line, in input order."""
        hyps = self._hypotheses(data, outputs)
        if out:
            atomic_write_text(out, "".join(h.replace("\n", " ") + "\n" for h in hyps))
        return hyps

    def describe_labels(self, labels: LabelMap) -> str:
        return "sequence-to-sequence"

    def chance(self, data: TaskData, labels: LabelMap) -> dict[str, tuple[float, str]]:
        """A model that learned nothing emits nothing useful: BLEU 0."""
        return {"bleu": (0.0, "no n-gram of the references produced")}

    @staticmethod
    def _hypotheses(data: TaskData, outputs: dict) -> list[str]:
        tokenizer = data.extra
        hyps = []
        for row, ex in zip(outputs["hyp"], data.examples):
            ids = [int(t) for t in row if t >= 0]
            hyps.append(tokenizer.decode(ids, skip_special_tokens=True).strip() if ex.src else "")
        return hyps


SPEC = Seq2SeqTask()
