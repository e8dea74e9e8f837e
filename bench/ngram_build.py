"""N-gram language models on WikiText-2: build speed vs NLTK, query speed and perplexity vs KenLM.

Measured in one process:

  build   - our 5-gram modified Kneser-Ney model from WikiText-2 train (lines already in memory;
            tokenizing, counting and smoothing are timed) against `nltk.lm.KneserNeyInterpolated`
            fitted on the first --nltk_fraction of the lines (its fit only counts; probabilities
            are computed at query time). NLTK is far too slow for the whole corpus, so its time is
            extrapolated linearly in the number of tokens (and says so). Writing and reading the
            ARPA file are timed separately.
  query   - per-sentence totals for every line of wiki.test.tokens: our vectorised
            `score_sentences` against `kenlm.Model.score` in a loop, on the same ARPA file we wrote.
            Our one-sentence-at-a-time `score` is timed too.
  ppl     - our perplexity against KenLM's on wiki.test.tokens (both count </s>, skip <s>, and score
            WikiText's <unk> as an ordinary word); they must agree within 0.1%.

Each timing is the best of --repeat rounds (ours and the reference alternate inside a round), as
the machine may be shared. `--table` also trains orders 3-5 with both Kneser-Ney variants and
prints their test perplexities (the table of RESULTS.md). Ends with one JSON line of figures.

    python bench/ngram_build.py                  # 5-gram modified KN
    python bench/ngram_build.py --table          # + orders 3/4/5, kn and modified-kn
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmforge.ngram import NGramLM, fit_ngram, read_arpa, write_arpa
from lmforge.text.corpus import read_lines
from lmforge.utils.shared_data import shared_data_path

BUILD_TARGET_X_NLTK = 50.0
BUILD_TARGET_S = 30.0
QUERY_TARGET_X_KENLM = 3.0
PPL_TOLERANCE = 1e-3


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--smoothing", default="modified-kneser-ney")
    p.add_argument("--nltk_fraction", type=float, default=0.02, help="share of train lines NLTK is fitted on")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--table", action="store_true", help="also orders 3/4/5 x kn/modified-kn perplexities")
    p.add_argument("--no_nltk", action="store_true")
    p.add_argument("--no_kenlm", action="store_true")
    return p.parse_args(argv)


def best_of(repeat: int, fn: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def nltk_fit(lines: list[str], order: int) -> None:
    """NLTK's interpolated Kneser-Ney, fitted the documented way (padded everygrams)."""
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    train, vocab = padded_everygram_pipeline(order, [line.split() for line in lines])
    KneserNeyInterpolated(order).fit(train, vocab)


def build_rounds(a: argparse.Namespace, train: list[str]) -> tuple[dict[str, float], NGramLM, list[str]]:
    """Best build time of ours (all of train) and of NLTK (a prefix of train), alternating per round."""
    subset = train[: max(1, int(len(train) * a.nltk_fraction))]
    best = {"ours": float("inf"), "nltk": float("inf")}
    lm = None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        lm = fit_ngram(train, order=a.order, smoothing=a.smoothing)
        best["ours"] = min(best["ours"], time.perf_counter() - t0)
        if not a.no_nltk:
            t0 = time.perf_counter()
            nltk_fit(subset, a.order)
            best["nltk"] = min(best["nltk"], time.perf_counter() - t0)
    assert lm is not None
    return best, lm, subset


def kenlm_figures(arpa: Path, lm: NGramLM, test: list[str], repeat: int) -> dict[str, Any]:
    import kenlm

    t0 = time.perf_counter()
    ken = kenlm.Model(str(arpa))
    load = time.perf_counter() - t0
    rounds: dict[str, float] = {"ours_batch": float("inf"), "ours_loop": float("inf"), "kenlm": float("inf")}
    totals: dict[str, Any] = {}
    for _ in range(repeat):  # alternate, so a burst of other work slows both alike
        for name, fn in [
            ("ours_batch", lambda: lm.score_sentences(test)),
            ("ours_loop", lambda: [lm.score(s) for s in test]),
            ("kenlm", lambda: [ken.score(s) for s in test]),
        ]:
            t = time.perf_counter()
            totals[name] = fn()
            rounds[name] = min(rounds[name], time.perf_counter() - t)
    ken_total = float(sum(totals["kenlm"]))
    ours_total = float(sum(totals["ours_batch"]))
    return {"load_seconds": load, "seconds": rounds, "kenlm_log10": ken_total, "ours_log10": ours_total}


def table(train: list[str], test: list[str], repeat: int) -> list[dict[str, Any]]:
    """Test perplexity and best-of-`repeat` build time for orders 3-5, both Kneser-Ney variants."""
    rows = []
    for order in (3, 4, 5):
        for smoothing in ("kneser-ney", "modified-kneser-ney"):
            seconds, lm = best_of(repeat, lambda o=order, s=smoothing: fit_ngram(train, order=o, smoothing=s))
            res = lm.perplexity(test)
            rows.append(
                {"order": order, "smoothing": smoothing, "test_ppl": round(res.perplexity, 2),
                 "build_seconds": round(seconds, 2)}
            )  # fmt: skip
            print(f"  {order}-gram {smoothing:<20} test ppl {res.perplexity:8.2f}   build {seconds:6.2f} s")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    for module, flag in (("kenlm", "no_kenlm"), ("nltk", "no_nltk")):
        if not getattr(a, flag) and importlib.util.find_spec(module) is None:
            print(f"{module} is not installed (pip install -e '.[ngram-ref]'): skipping its figures")
            setattr(a, flag, True)
    train_path = shared_data_path("wikitext2", "wiki.train.tokens")
    test_path = shared_data_path("wikitext2", "wiki.test.tokens")
    if train_path is None or test_path is None:
        sys.exit("WikiText-2 (wiki.train.tokens, wiki.test.tokens) is not in the shared data folder")
    train = list(read_lines(train_path))
    test = list(read_lines(test_path))
    print(f"WikiText-2: {len(train):,} train lines, {len(test):,} test lines; cpus {os.cpu_count()}")

    best, lm, subset = build_rounds(a, train)
    build = best["ours"]
    print(f"ours: {a.order}-gram {a.smoothing} built in {build:.2f} s (best of {a.repeat}); {lm}")
    result: dict[str, Any] = {
        "bench": "ngram",
        "order": a.order,
        "smoothing": a.smoothing,
        "cpus": os.cpu_count(),
        "ngrams": lm.ngram_counts(),
        "build_seconds": round(build, 3),
    }

    with tempfile.TemporaryDirectory(prefix="lmforge-ngram-") as tmp:
        arpa = Path(tmp) / "lm.arpa"
        write, _ = best_of(1, lambda: write_arpa(lm, arpa))
        load, loaded = best_of(1, lambda: read_arpa(arpa))
        print(
            f"ours: ARPA ({arpa.stat().st_size / 1e6:.0f} MB) written in {write:.2f} s, read in {load:.2f} s"
        )
        result.update(arpa_mb=round(arpa.stat().st_size / 1e6, 1), arpa_write_seconds=round(write, 3),
                      arpa_read_seconds=round(load, 3), build_and_write_seconds=round(build + write, 3))  # fmt: skip

        ours = loaded.perplexity(test)
        tokens = ours.tokens
        print(f"ours: test perplexity {ours.perplexity:.3f} over {tokens:,} tokens ({ours.oov:,} <unk>)")
        result.update(test_ppl=round(ours.perplexity, 4), test_tokens=tokens, test_oov=ours.oov)

        if not a.no_kenlm:
            k = kenlm_figures(arpa, loaded, test, a.repeat)
            s = k["seconds"]
            ken_ppl = 10.0 ** (-k["kenlm_log10"] / tokens)
            rel = abs(ken_ppl - ours.perplexity) / ken_ppl
            print(f"kenlm: loaded the same file in {k['load_seconds']:.2f} s; test perplexity {ken_ppl:.3f} "
                  f"(ours differs by {rel:.2e}, tolerance {PPL_TOLERANCE:.0e})")  # fmt: skip
            words_s = {name: tokens / sec for name, sec in s.items()}
            print(f"query ({len(test):,} sentences, best of {a.repeat}):")
            for name, label in [("kenlm", "kenlm Model.score loop"), ("ours_batch", "ours score_sentences"),
                                ("ours_loop", "ours score loop")]:  # fmt: skip
                print(f"  {label:<24}{s[name]:8.3f} s {words_s[name] / 1e6:8.2f} M tokens/s")
            query_ratio = s["ours_batch"] / s["kenlm"]
            print(
                f"ours (batch) takes {query_ratio:.2f}x KenLM's time (target <= {QUERY_TARGET_X_KENLM:.0f}x)"
            )
            result.update(
                kenlm_ppl=round(ken_ppl, 4), ppl_rel_diff=float(f"{rel:.3g}"),
                ppl_within_tolerance=rel <= PPL_TOLERANCE, kenlm_load_seconds=round(k["load_seconds"], 3),
                query_seconds_kenlm=round(s["kenlm"], 4), query_seconds_ours_batch=round(s["ours_batch"], 4),
                query_seconds_ours_loop=round(s["ours_loop"], 4),
                query_tokens_per_s_kenlm=round(words_s["kenlm"]), query_tokens_per_s_ours=round(words_s["ours_batch"]),
                query_time_ratio_ours_vs_kenlm=round(query_ratio, 3),
                query_loop_time_ratio_ours_vs_kenlm=round(s["ours_loop"] / s["kenlm"], 3),
            )  # fmt: skip

    if not a.no_nltk:
        sub_tokens = sum(len(line.split()) + 1 for line in subset)
        all_tokens = sum(len(line.split()) + 1 for line in train)
        nltk_all = best["nltk"] * all_tokens / sub_tokens
        speedup = nltk_all / build
        print(f"nltk: KneserNeyInterpolated({a.order}).fit on {len(subset):,} lines ({sub_tokens:,} tokens) took "
              f"{best['nltk']:.2f} s (best of {a.repeat}); EXTRAPOLATED linearly to all {all_tokens:,} tokens: "
              f"{nltk_all:.1f} s")  # fmt: skip
        print(f"ours builds {speedup:.0f}x faster than NLTK (target >= {BUILD_TARGET_X_NLTK:.0f}x)")
        result.update(
            nltk_fit_lines=len(subset), nltk_fit_seconds=round(best["nltk"], 3),
            nltk_extrapolated_seconds=round(nltk_all, 2), nltk_extrapolated=True,
            build_speedup_vs_nltk=round(speedup, 1),
        )  # fmt: skip
    total = build + result["arpa_write_seconds"]
    print(f"build {build:.2f} s, with the ARPA file {total:.2f} s (target < {BUILD_TARGET_S:.0f} s)")
    result["build_under_target"] = total < BUILD_TARGET_S

    if a.table:
        print("WikiText-2 test perplexity:")
        result["table"] = table(train, test, min(a.repeat, 2))

    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
