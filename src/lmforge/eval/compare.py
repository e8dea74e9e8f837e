"""`lmforge compare`: n-gram and neural language models scored on one text, in units that compare.

Per-token perplexity, exp(NLL / tokens), depends on the tokenizer: a byte-level BPE model divides
its loss by more (and easier) tokens than a word-level one, so its per-token perplexity is lower
for the same quality of prediction. Two measures divide the *same* total by a count that belongs
to the text, not to the model, and therefore compare any two models:

* **per-word perplexity** = exp(NLL / W), where NLL is the total negative log-likelihood of the
  text in nats and W = (whitespace-separated words) + (one end of sentence per line). This is the
  n-gram convention of SRILM and KenLM (`</s>` predicted and counted, `<s>` not), which is also how
  the word-level benchmark numbers in the literature (Penn Treebank, WikiText) are computed.
* **bits per byte** = NLL / ln 2 / B, where B = UTF-8 bytes of the text with one byte per newline.

The text is read one sentence per line (every line kept, an empty line being an empty sentence,
like `lmforge ngram eval`) and each line is normalised to its words joined by single spaces, so
every model sees exactly the same characters and B does not depend on stray spacing. The models:

* an ARPA file: its total log10 probability times ln 10 is the NLL; its tokens are W.
* a run directory (any causal LM `lmforge.load` opens): the text is one line = one document,
  ``[eos] line1 [eos] line2 [eos] ...``, and the NLL sums every predicted token, the eos closing
  each line included, so the neural model too pays for predicting every end of line. The leading
  eos is context only, like `<s>`. Windows of the model's context run over the whole stream, so a
  neural model may use earlier lines as history, as neural LMs are usually evaluated. A model whose
  forward takes a `state` (LSTM, GRU, NNLM) carries it from window to window (`score_carried`);
  one whose forward returns (logits, state) is otherwise scored window by window from a fresh state.

For a word-level neural model (tokenizer kind ``word``, trained with ``--prep.txt_unit line``) the
tokens it predicts are exactly the W events, and its per-word perplexity is its per-token one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.eval.scoring import score_carried, score_stream, takes_state, token_stream

LN10 = math.log(10.0)


@dataclass
class TextStats:
    """What the comparable measures divide by; a property of the text alone."""

    lines: int  # sentences, one per line; each contributes one end-of-sentence event
    words: int  # whitespace-separated words
    bytes: int  # UTF-8 bytes of the normalised lines plus one per newline

    @property
    def word_events(self) -> int:
        """W: words plus one end of sentence per line, the denominator of per-word perplexity."""
        return self.words + self.lines


def per_word_perplexity(nll_nats: float, stats: TextStats) -> float:
    """exp(total NLL in nats / (words + lines)): comparable across tokenizers."""
    if stats.word_events <= 0:
        raise LmforgeError("the text has no words and no lines; give a file with held-out text")
    return math.exp(min(nll_nats / stats.word_events, 700.0))


def bits_per_byte(nll_nats: float, stats: TextStats) -> float:
    """total NLL / ln 2 / UTF-8 bytes (one per newline): comparable across tokenizers."""
    if stats.bytes <= 0:
        raise LmforgeError("the text has no bytes to score; give a file with held-out text")
    return nll_nats / math.log(2.0) / stats.bytes


def ngram_nll(log10_prob: float) -> float:
    """An n-gram's total log10 probability as a total NLL in nats."""
    return -float(log10_prob) * LN10


def read_text(
    data: str | Path | Sequence[str | Path], *, encoding: str = "utf-8", skip_empty: bool = False
) -> tuple[list[str], TextStats]:
    """The lines of `data` normalised to single-spaced words, and the counts of the definitions.

    Words are split as KenLM splits them (ASCII whitespace), so W equals the token count of
    `lmforge ngram eval`. `skip_empty` drops empty lines for every model alike (neural runs
    prepared with ``txt_unit line`` never saw one, since blank lines are not documents there).
    """
    from lmforge.ngram.vocab import split_words
    from lmforge.text.corpus import read_lines

    lines: list[str] = []
    words = 0
    for raw in read_lines(data, encoding=encoding):
        ws = split_words(raw)
        if skip_empty and not ws:
            continue
        words += len(ws)
        lines.append(" ".join(ws))
    if not lines:
        raise LmforgeError(
            f"{data}: no lines to score; give a file with held-out text, one sentence per line"
        )
    nbytes = sum(len(line.encode("utf-8")) for line in lines) + len(lines)
    return lines, TextStats(lines=len(lines), words=words, bytes=nbytes)


@dataclass
class ModelScore:
    """One model's scores on the text; `nll` is the total in nats that both measures divide."""

    name: str
    type: str  # "5-gram", "transformer", "lstm", ...
    parameters: int  # n-gram: n-grams stored; neural: parameters
    word_perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens of the model's own tokenizer (ends of line included)
    token_perplexity: float  # exp(nll / tokens): only comparable between models sharing a tokenizer
    nll: float
    seconds: float  # wall time of the evaluation (tokenizing and scoring; loading excluded)
    load_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompareResult:
    data: str
    lines: int
    words: int
    word_events: int  # W = words + lines
    bytes: int
    models: list[ModelScore]
    plot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [m.to_dict() for m in self.models]
        return d


def _score(name: str, kind: str, params: int, nll: float, tokens: int, stats: TextStats, seconds: float,
           load_seconds: float, details: dict[str, Any]) -> ModelScore:  # fmt: skip
    return ModelScore(
        name=name, type=kind, parameters=int(params), word_perplexity=per_word_perplexity(nll, stats),
        bits_per_byte=bits_per_byte(nll, stats), tokens=int(tokens),
        token_perplexity=math.exp(min(nll / max(tokens, 1), 700.0)), nll=float(nll),
        seconds=round(seconds, 4), load_seconds=round(load_seconds, 4), details=details,
    )  # fmt: skip


def score_ngram(path: str | Path, lines: list[str], stats: TextStats, name: str | None = None) -> ModelScore:
    """An ARPA model's scores; its per-word perplexity is exactly `lmforge ngram eval`'s perplexity."""
    from lmforge.ngram.arpa import read_arpa

    t0 = time.perf_counter()
    lm = read_arpa(path)
    t1 = time.perf_counter()
    ev = lm.perplexity(lines)
    seconds = time.perf_counter() - t1
    if ev.tokens != stats.word_events:  # both count words + </s>; a mismatch is a bug, not user error
        raise RuntimeError(f"{path}: scored {ev.tokens} tokens, expected {stats.word_events}")
    details = {"order": lm.order, "oov": ev.oov, "ngrams": lm.ngram_counts(), "vocab_size": len(lm.vocab)}
    return _score(name or str(path), f"{lm.order}-gram", sum(lm.ngram_counts()), ngram_nll(ev.log10_prob),
                  ev.tokens, stats, seconds, t1 - t0, details)  # fmt: skip


class _LogitsOnly(torch.nn.Module):
    """Adapts a model whose forward returns (logits, state), as recurrent models do, to logits only.

    Each window is scored from a fresh state, exactly like a Transformer's window.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def model_type(arch: str) -> str:
    """The name shown for a run's `model.arch`: decoder -> transformer; recurrent arches as they are."""
    return "transformer" if arch == "decoder" else str(arch)


def neural_nll(
    lm: Any, lines: list[str], *, batch_size: int = 8, stride: int | None = None
) -> tuple[float, int]:
    """Total NLL (nats) and predicted tokens of a loaded causal run on lines, eos after every line.

    The stream is `[eos] line1 [eos] line2 [eos] ...` (`lmforge.eval.scoring.token_stream` with
    one line per document); every token after the leading eos is predicted and summed.
    """
    if lm.tokenizer.eos_id is None:
        raise LmforgeError(
            f"{lm.run_dir}/tokenizer.json has no end-of-text token, so the end of each line cannot be "
            "predicted; per-word perplexity needs one (train the run with an lmforge tokenizer)"
        )
    ids, _ = token_stream(lm.tokenizer, lines)
    context = int(getattr(lm.model_config, "max_len", 0) or 256)
    if takes_state(lm.model) and stride is None:
        return score_carried(lm.model.eval(), ids, context=context, streams=batch_size, device=lm.device)
    model = _LogitsOnly(lm.model.eval())
    return score_stream(model, ids, context=context, stride=stride, batch_size=batch_size, device=lm.device)


def score_run(
    run_dir: str | Path, lines: list[str], stats: TextStats, *, device: str = "auto", batch_size: int = 8,
    stride: int | None = None, name: str | None = None,
) -> ModelScore:  # fmt: skip
    """A run directory's scores (any causal arch `lmforge.load` builds)."""
    from lmforge.run import load
    from lmforge.utils.device import resolve_device

    t0 = time.perf_counter()
    lm = load(run_dir, device=resolve_device(device))
    arch = str(lm.model_config.arch)
    if arch.startswith("encoder") or lm.config.get("objective") not in (None, "clm"):
        raise LmforgeError(
            f"{run_dir}: a masked-LM run ({lm.config.get('objective')}, arch {arch}) gives no probability "
            "to a text; compare causal runs (objective clm) and n-gram models"
        )
    model = lm.model
    params = (
        model.num_params() if hasattr(model, "num_params") else sum(p.numel() for p in model.parameters())
    )
    t1 = time.perf_counter()
    nll, count = neural_nll(lm, lines, batch_size=batch_size, stride=stride)
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    seconds = time.perf_counter() - t1
    details = {"tokenizer": lm.tokenizer.kind, "vocab_size": lm.tokenizer.vocab_size, "arch": arch,
               "context": int(lm.model_config.max_len), "device": str(lm.device)}  # fmt: skip
    return _score(
        name or str(run_dir), model_type(arch), params, nll, count, stats, seconds, t1 - t0, details
    )


def compare(
    models: Sequence[str | Path], data: str | Path | Sequence[str | Path], *, batch_size: int = 8,
    stride: int | None = None, device: str = "auto", plot: str | Path | None = None, skip_empty: bool = False,
    encoding: str = "utf-8",
) -> CompareResult:  # fmt: skip
    """Score n-gram models (ARPA files) and runs (directories) on one text; see the module docstring.

    The Python twin of `lmforge compare --data test.txt lm5.arpa runs/lstm runs/gpt`.
    """
    if isinstance(models, (str, Path)):
        models = [models]
    if not models:
        raise LmforgeError("no models to compare; give ARPA files and/or run directories")
    for m in models:
        if not Path(m).exists():
            raise LmforgeError(f"{m}: no such ARPA file or run directory")
    lines, stats = read_text(data, encoding=encoding, skip_empty=skip_empty)
    scores = []
    for m in models:
        if Path(m).is_dir():
            scores.append(
                score_run(m, lines, stats, device=device, batch_size=batch_size, stride=stride, name=str(m))
            )
        else:
            scores.append(score_ngram(m, lines, stats, name=str(m)))
    shown = data if isinstance(data, (str, Path)) else ",".join(map(str, data))
    result = CompareResult(
        data=str(shown), lines=stats.lines, words=stats.words, word_events=stats.word_events,
        bytes=stats.bytes, models=scores,
    )  # fmt: skip
    if plot is not None:
        result.plot = str(plot_comparison(result, plot))
    return result


def _short(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def format_table(result: CompareResult) -> str:
    """The human table: one row per model, the comparable columns first."""
    head = ("model", "type", "params", "ppl/word", "bits/byte", "tokens", "ppl/token", "seconds")
    rows = [
        (m.name, m.type, _short(m.parameters), f"{m.word_perplexity:.2f}", f"{m.bits_per_byte:.4f}",
         f"{m.tokens:,}", f"{m.token_perplexity:.2f}", f"{m.seconds:.2f}")
        for m in result.models
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    intro = (
        f"{result.data}: {result.lines:,} lines, {result.words:,} words (W = {result.word_events:,} with one "
        f"</s> per line), {result.bytes:,} bytes"
    )
    return "\n".join([intro, line(head), *(line(r) for r in rows)])


def plot_comparison(result: CompareResult, out: str | Path) -> Path:
    """Bar charts of per-word perplexity and bits per byte, one bar per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.utils.io import atomic_path

    out = Path(out)
    names = [Path(m.name).name or m.name for m in result.models]
    colors = ["#4c72b0" if m.type.endswith("-gram") else "#dd8452" for m in result.models]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(names) + 3), 4), dpi=110)
    for ax, key, title in (
        (axes[0], "word_perplexity", "per-word perplexity (lower is better)"),
        (axes[1], "bits_per_byte", "bits per byte (lower is better)"),
    ):
        values = [getattr(m, key) for m in result.models]
        bars = ax.bar(range(len(values)), values, color=colors)
        ax.bar_label(bars, labels=[f"{v:.2f}" if key == "word_perplexity" else f"{v:.3f}" for v in values],
                     fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, max(values) * 1.15 if values and max(values) > 0 else 1)
    fig.suptitle(f"{Path(result.data).name}: {result.word_events:,} words incl. </s>", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
