"""Task metrics: classification (scikit-learn), NER (seqeval), SQuAD v1.1 EM/F1, and for generated
text sacreBLEU's BLEU and chrF and Google's ROUGE (rouge-score).

Classification, NER, BLEU and ROUGE delegate to the reference libraries so the numbers match what
papers report (and BLEU what the `sacrebleu` command prints, signature included); SQuAD is small
enough to implement from its published definition, which keeps the dependency list short. The
libraries are imported lazily so the readers work without the `tasks` / `seq2seq` extras.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.tasks.readers import QAExample


def _require(module: str, extra: str = "tasks") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LmforgeError(f"{module} is needed for task metrics; install lmforge[{extra}]") from None


def classification_metrics(
    y_true: Sequence[str | int], y_pred: Sequence[str | int], labels: Sequence[str | int]
) -> dict[str, Any]:
    """Accuracy, macro-F1 over `labels` (all of them, even ones never predicted), and sklearn's report.

    Returns {"accuracy", "macro_f1", "report" (dict), "report_text"}; accuracy and F1 are in [0, 1].
    Passing `labels` explicitly keeps macro-F1 comparable between runs where a class happens to be
    absent from the predictions; such classes count with F1 = 0.
    """
    if len(y_true) != len(y_pred):
        raise LmforgeError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if not y_true:
        raise LmforgeError("no examples to score")
    sk = _require("sklearn.metrics")
    labels = list(labels)
    names = [str(lab) for lab in labels]
    return {
        "accuracy": float(sk.accuracy_score(y_true, y_pred)),
        "macro_f1": float(sk.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "report": sk.classification_report(
            y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
        ),
        "report_text": sk.classification_report(
            y_true, y_pred, labels=labels, target_names=names, digits=4, zero_division=0
        ),
    }


def ner_metrics(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    *,
    strict_scheme: str | None = None,
) -> dict[str, Any]:
    """Entity-level micro precision/recall/F1 and per-type scores via seqeval, in [0, 1].

    Default mode is seqeval's conlleval-compatible one (an entity is any chunk conlleval would
    extract, including ones started by a stray `I-`). `strict_scheme="IOB2"` (or "IOBES", ...) uses
    seqeval's strict mode, where only well-formed chunks count.
    Returns {"precision", "recall", "f1", "per_type": {type: {precision, recall, f1, support}}, "report_text"}.
    """
    if len(true_tags) != len(pred_tags):
        raise LmforgeError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise LmforgeError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    sq = _require("seqeval.metrics")
    kwargs: dict[str, Any] = {}
    if strict_scheme is not None:
        schemes = _require("seqeval.scheme")
        kwargs = {"mode": "strict", "scheme": getattr(schemes, strict_scheme.upper())}
    y_true, y_pred = [list(t) for t in true_tags], [list(p) for p in pred_tags]
    report = sq.classification_report(y_true, y_pred, output_dict=True, zero_division=0, **kwargs)
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    return {
        "precision": float(sq.precision_score(y_true, y_pred, zero_division=0, **kwargs)),
        "recall": float(sq.recall_score(y_true, y_pred, zero_division=0, **kwargs)),
        "f1": float(sq.f1_score(y_true, y_pred, zero_division=0, **kwargs)),
        "per_type": per_type,
        "report_text": sq.classification_report(y_true, y_pred, digits=4, zero_division=0, **kwargs),
    }


# ----------------------------------------------------------------------------------------------------
# SQuAD v1.1 (written from the definition in Rajpurkar et al. 2016 and its evaluation description)
# ----------------------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    The steps run in this order, so "The" is removed after lowercasing and "a." becomes "a" before the
    article pass removes it.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 between normalized answers; 0 when either side normalizes to nothing."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], examples: Iterable[QAExample]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (×100), each the max over an example's gold answers, averaged.

    Every example counts: a question with no prediction scores 0 (reported as `missing`), as in the
    official evaluation. Predictions for ids not among the examples are ignored.
    """
    em_sum = f1_sum = 0.0
    n = missing = 0
    for ex in examples:
        n += 1
        if ex.id not in predictions:
            missing += 1
            continue
        if not ex.answers:
            raise LmforgeError(f"question {ex.id} has no gold answers to score against")
        pred = predictions[ex.id]
        em_sum += max(exact_match(pred, a.text) for a in ex.answers)
        f1_sum += max(token_f1(pred, a.text) for a in ex.answers)
    if n == 0:
        raise LmforgeError("no examples to score")
    return {"exact_match": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n, "count": n, "missing": missing}


# ----------------------------------------------------------------------------------------------
# Generated text

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def bleu_tokenizer(references: Sequence[str]) -> str:
    """sacreBLEU's tokenizer for these references: `zh` when they are mostly Chinese/Japanese/Korean
    script (BLEU over unsegmented CJK text would count whole sentences as words), else `13a`, the
    default of the `sacrebleu` command and of WMT."""
    sample = "".join(references[:200])
    cjk = len(_CJK.findall(sample))
    return "zh" if sample and cjk > 0.3 * len(sample.replace(" ", "")) else "13a"


References = Sequence[str | Sequence[str]]  # per hypothesis: one reference, or several


def _reference_sets(hypotheses: Sequence[str], references: References) -> list[tuple[str, ...]]:
    """Each hypothesis' references as a tuple: a string is one reference, a sequence several.

    Checked here once so that BLEU, chrF and ROUGE refuse the same inputs with the same words.
    """
    if len(hypotheses) != len(references):
        raise LmforgeError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise LmforgeError("no examples to score")
    sets = []
    for i, refs in enumerate(references):
        group = (refs,) if isinstance(refs, str) else tuple(refs)
        if not group or not all(isinstance(r, str) for r in group):
            raise LmforgeError(
                f"example {i}: references must be a string or a non-empty list of strings, not {refs!r}"
            )
        sets.append(group)
    return sets


def _reference_streams(sets: Sequence[tuple[str, ...]]) -> list[list[str | None]]:
    """sacreBLEU's multi-reference input: stream k holds every example's k-th reference.

    An example with fewer references than the most has None in the streams it lacks: sacreBLEU
    drops None references (`Metric._cache_references`), so it is scored against the ones it has
    and the signature says `nrefs:var`. An empty string would not do: it is a reference of length
    0, which BLEU's closest-length brevity penalty can pick.
    """
    width = max(len(refs) for refs in sets)
    return [[refs[k] if k < len(refs) else None for refs in sets] for k in range(width)]


def bleu(
    hypotheses: Sequence[str], references: References, *, tokenize: str = "auto", lowercase: bool = False,
    max_order: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """Corpus BLEU (×100) by sacreBLEU, against one or several references per hypothesis, with its
    signature.

    Detokenised text in, as the `sacrebleu` command takes it: `sacrebleu ref.txt -i hyp.txt` prints
    the same score, and `sacrebleu ref1.txt ref2.txt -i hyp.txt` the same multi-reference one (an
    n-gram counts up to its most frequent use in any reference; the brevity penalty takes the
    reference length closest to the hypothesis'). `lowercase` with the default 13a tokenizer gives
    the "tokenised, lowercased" BLEU many papers report (`sacrebleu -lc`); it is not comparable to
    cased BLEU. `max_order` 1 or 2 gives the BLEU-1 / BLEU-2 of dialogue papers: the geometric
    mean of the n-gram precisions up to that order, times the brevity penalty
    (`sacrebleu --max-ngram-order`).
    """
    sets = _reference_sets(hypotheses, references)
    sb = _require("sacrebleu", "seq2seq")
    tok = bleu_tokenizer([refs[0] for refs in sets]) if tokenize == "auto" else tokenize
    metric = sb.metrics.BLEU(tokenize=tok, lowercase=lowercase, max_ngram_order=max_order)
    result = metric.corpus_score(list(hypotheses), _reference_streams(sets))
    return {
        "bleu": float(result.score),
        "signature": str(metric.get_signature()),
        "precisions": [float(p) for p in result.precisions],
        "brevity_penalty": float(result.bp),
        "hyp_len": int(result.sys_len),
        "ref_len": int(result.ref_len),
        "text": str(result),
    }


def distinct(hypotheses: Sequence[str], n: int, *, tokenize: str = "auto") -> float:
    """Distinct-n (Li et al. 2016), ×100: the distinct n-grams among all n-grams of all the
    hypotheses together. Words are sacreBLEU's tokens (13a, or characters for Chinese: `zh`),
    the ones BLEU counts; a hypothesis shorter than n adds none. 0 when there is no n-gram."""
    sb = _require("sacrebleu", "seq2seq")
    tok = bleu_tokenizer(list(hypotheses)) if tokenize == "auto" else tokenize
    split = sb.metrics.BLEU(tokenize=tok).tokenizer
    grams: list[tuple[str, ...]] = []
    for hyp in hypotheses:
        words = split(hyp).split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def chrf(hypotheses: Sequence[str], references: References) -> dict[str, Any]:
    """Corpus chrF (×100, character n-grams up to 6, beta 2) by sacreBLEU, with its signature.

    With several references, each hypothesis' statistics are those of its best-scoring reference
    (sacreBLEU's multi-reference chrF, what `sacrebleu ref1 ref2 -i hyp -m chrf` prints).
    """
    sets = _reference_sets(hypotheses, references)
    sb = _require("sacrebleu", "seq2seq")
    metric = sb.metrics.CHRF()
    result = metric.corpus_score(list(hypotheses), _reference_streams(sets))
    return {"chrf": float(result.score), "signature": str(metric.get_signature())}


class _CJKTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]: Chinese text would score 0. This one
    lowercases, splits CJK characters apart (ROUGE on Chinese is computed over characters, as
    the LCSTS and CSL papers do) and keeps other runs of letters and digits as words."""

    _TOKEN = re.compile(f"{_CJK.pattern}|[^\\W_]+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())


def rouge(hypotheses: Sequence[str], references: References, *, stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 (×100) by Google's rouge-score package.

    With several references, each hypothesis scores its best reference's F1, per ROUGE kind
    (`RougeScorer.score_multi`; SciTLDR's evaluation takes this maximum). rougeLsum treats
    newlines as sentence boundaries (the summary-level LCS of the CNN/DailyMail papers); put one
    sentence per line to get it, otherwise it equals rougeL. Porter stemming is on, as in those
    papers. Text with CJK characters is scored over characters (see `_CJKTokenizer`).
    """
    sets = _reference_sets(hypotheses, references)
    scoring = _require("rouge_score.rouge_scorer", "seq2seq")
    kinds = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    cjk = bleu_tokenizer([refs[0] for refs in sets]) == "zh"
    scorer = scoring.RougeScorer(
        kinds, use_stemmer=stemmer and not cjk, tokenizer=_CJKTokenizer() if cjk else None
    )
    totals = dict.fromkeys(kinds, 0.0)
    for hyp, refs in zip(hypotheses, sets):
        scores = scorer.score_multi(list(refs), hyp)
        for k in kinds:
            totals[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(sets) for k, v in totals.items()}
