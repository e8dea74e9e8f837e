"""`lmforge scaling`: train a ladder of model sizes on one corpus and fit L(N) = a * N^-alpha + c.

The experiment of Kaplan et al. (2020) and Hoffmann et al. (2022) in miniature: the same data,
tokenizer, optimiser settings and budget rule for every size, so validation loss differs only by
the number of parameters N.

**N** is the non-embedding parameter count of Kaplan et al.: every weight except the token and
position embeddings and the LM head (which, tied, is the token embedding). It is smaller than
`lmforge info`'s `non_embedding_parameters`, which keeps a tied head because that matrix costs
compute; the vocabulary matrices are left out here because they do not follow the power law.

**Shape rule.** Kaplan et al. found the loss nearly independent of shape over a wide range of
aspect ratios, so one fixed rule is enough: a decoder block holds about 12 * d_model^2 weights, the
aspect ratio is held at d_model = 64 * n_layer (GPT-2 small's 768 / 12), hence
n_layer = round((N / (12 * 64^2))^(1/3)) (at least 1). d_model is then the multiple of the head
size whose exact N, counted on the built model with every other `--model.*` setting applied, is
nearest to the target on a log scale; n_head = d_model / head size, with heads of 16 below
d_model 128, 32 below 256 and 64 from 256 on (GPT-2's). The result is within about 15% of the
target from 30k parameters up (coarser below, where one layer of width 16 is the step).

**Budget rule.** Each size trains on `tokens_per_param * N` tokens (20 is the Chinchilla-optimal
ratio), i.e. ceil(tokens_per_param * N / tokens per step) steps, capped at `max_steps`. Where the
cap binds, the largest sizes are under-trained compared with the rule and the fitted exponent is
flatter; the JSON marks those rungs `capped`. Warmup is min(100, steps // 10) steps unless
`--train.warmup_steps` is given.

**Fit.** The final validation loss of each size (nats per token; one tokenizer for all sizes, so
they compare) is fitted by least squares in loss space: for each c on a grid over [0, min loss)
the best a and alpha come from a linear fit of log(L - c) on log N; the best c is refined by a
golden-section search and all three parameters are polished with damped Gauss-Newton steps. With
two sizes only a pure power law (c = 0) is fitted; with three the curve passes through the points
(no degrees of freedom are left to judge the fit); four or more give a fit with residuals. Small
ladders give indicative exponents, not precise ones.

**Compute** is each run's training FLOPs, `flops_per_token * tokens` (6N' + attention per token,
with N' including the LM head: what the GPU actually does), shown in `plots/loss_vs_compute.png`
together with each run's training curve; `6 * N * tokens` is reported as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import deep_merge, from_dict, to_dict
from lmforge.errors import LmforgeError
from lmforge.models.config import ModelConfig
from lmforge.pretraining import PrepConfig
from lmforge.tokenizer import TokenizerConfig
from lmforge.train.config import TrainConfig

ASPECT = 64  # d_model / n_layer
PER_LAYER = 12  # a block's weights per d_model^2 (4 attention + 8 MLP with d_ff = 4 d_model)
# Set by the ladder itself; giving them would make every rung the same model or break the rule.
RESERVED = ("model.n_layer", "model.d_model", "model.n_head", "model.d_ff", "train.max_steps")
_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?([kKmMbBgG]?)$")
_UNIT = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


# ---------------------------------------------------------------------------------- sizes and shapes


def parse_size(text: str) -> int:
    """'0.1M' -> 100000; also '300k', '2B', '1e6', '50000'."""
    m = _SIZE.match(text.strip())
    if not m:
        raise LmforgeError(f"--sizes: {text!r} is not a size; write e.g. 0.1M, 300k, 2B or 1e6")
    value = float(m.group(1)) * 10 ** int(m.group(2) or 0) * _UNIT[m.group(3).lower()]
    if value < 1:
        raise LmforgeError(f"--sizes: {text!r} is below one parameter; give sizes like 0.1M")
    return round(value)


def parse_sizes(spec: str | Sequence[str | int]) -> list[tuple[str, int]]:
    """(label, target N) per rung, smallest first; the label names the run directory."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        label = item.strip() if isinstance(item, str) else str(item)
        out.append((label, parse_size(label)))
    if not out:
        raise LmforgeError("--sizes is empty; give at least two sizes, e.g. --sizes 0.1M,0.3M,1M")
    targets = [n for _, n in out]
    if len(set(targets)) != len(targets):
        raise LmforgeError(f"--sizes {spec!r} names a size twice; give distinct sizes")
    return sorted(out, key=lambda x: x[1])


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan's N: parameters outside the token/position embeddings and the LM head."""
    skip = ("tok_emb.", "pos_emb.", "lm_head.")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def count_params(cfg: ModelConfig) -> int:
    """N of a config, counted on a model built on the meta device (no memory, no init cost)."""
    from lmforge.models import build_model

    cfg = from_dict(ModelConfig, {**to_dict(cfg), "vocab_size": cfg.vocab_size or 64})
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except (RuntimeError, NotImplementedError):  # a layer that cannot live on meta: build it for real
        model = build_model(cfg)
    return non_embedding_params(model)


def _head_dim(d_model: int) -> int:
    """Head size by width: fine steps of d_model for the smallest models, GPT-2's 64 from 256 on."""
    return 16 if d_model < 128 else 32 if d_model < 256 else 64


def shape_for(target: int, base: ModelConfig | None = None) -> ModelConfig:
    """The decoder of about `target` non-embedding parameters under the shape rule (module docstring)."""
    base = base or ModelConfig()
    n_layer = max(1, round((target / (PER_LAYER * ASPECT**2)) ** (1 / 3)))
    d0 = math.sqrt(target / (PER_LAYER * n_layer))
    valid = [d for d in range(16, 8 * int(d0) + 128, 16) if d % _head_dim(d) == 0]
    near = sorted(valid, key=lambda d: abs(math.log(d / d0)))[:4]
    best: tuple[float, ModelConfig] | None = None
    for d in near:
        fields = {
            **to_dict(base),
            "n_layer": n_layer,
            "d_model": d,
            "n_head": d // _head_dim(d),
            "d_ff": None,
        }
        cfg = from_dict(ModelConfig, fields, prefix="model.")
        err = abs(math.log(count_params(cfg) / target))
        if best is None or err < best[0]:
            best = (err, cfg)
    assert best is not None
    return best[1]


def budget_steps(
    n_params: int, tokens_per_param: float, tokens_per_step: int, max_steps: int
) -> tuple[int, bool]:
    """Steps to see tokens_per_param * N tokens, capped at max_steps; and whether the cap bound."""
    wanted = max(1, math.ceil(tokens_per_param * n_params / tokens_per_step))
    return min(wanted, max_steps), wanted > max_steps


# ---------------------------------------------------------------------------------- the fit


@dataclass
class PowerLawFit:
    """L(N) = a * N^-alpha + c, fitted by least squares on the losses."""

    a: float
    alpha: float
    c: float
    rmse: float  # root mean squared residual in loss units
    points: int
    note: str

    def predict(self, n: Any) -> np.ndarray:
        return self.a * np.power(np.asarray(n, dtype=np.float64), -self.alpha) + self.c

    def formula(self) -> str:
        return f"L(N) = {self.a:.4g} * N^-{self.alpha:.4f} + {self.c:.4f}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "formula": self.formula()}


def _loglinear(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """(log a', alpha) of z = log a' - alpha * x by least squares."""
    A = np.stack([np.ones_like(x), -x], axis=1)
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    return float(coef[0]), float(coef[1])


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    """Fit L(N) = a * N^-alpha + c (c in [0, min L)) with numpy alone; see the module docstring."""
    N = np.asarray(n, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if len(N) != len(y) or len(N) < 2:
        raise LmforgeError(f"a scaling fit needs at least two (size, loss) points, got {min(len(N), len(y))}")
    if not (np.all(N > 0) and np.all(np.isfinite(y)) and np.all(y > 0)):
        raise LmforgeError("a scaling fit needs positive sizes and finite, positive losses")
    n0 = float(np.exp(np.mean(np.log(N))))  # centring: a' is the loss excess at the middle size
    x = np.log(N / n0)

    def sse(la: float, alpha: float, c: float) -> float:
        return float(np.sum((np.exp(la - alpha * x) + c - y) ** 2))

    if len(N) == 2 or np.ptp(y) == 0:
        la, alpha = _loglinear(x, np.log(y))
        c = 0.0
        note = "two points: a pure power law (c fixed at 0)" if len(N) == 2 else "all losses equal"
    else:
        ymin = float(y.min())

        def profile(c: float) -> float:
            return sse(*_loglinear(x, np.log(y - c)), c)

        grid = ymin * np.concatenate([np.linspace(0.0, 0.999, 400), 1 - np.geomspace(1e-3, 1e-7, 40)])
        vals = [profile(c) for c in grid]
        i = int(np.argmin(vals))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        g = (math.sqrt(5) - 1) / 2
        for _ in range(60):  # golden section on the bracket around the best grid point
            c1, c2 = hi - g * (hi - lo), lo + g * (hi - lo)
            if profile(c1) <= profile(c2):
                hi = c2
            else:
                lo = c1
        c = (lo + hi) / 2
        la, alpha = _loglinear(x, np.log(y - c))
        la, alpha, c = _polish(x, y, la, alpha, c, sse)
        if len(N) == 3:
            note = "three points for three parameters: the curve passes through them; alpha is indicative"
        else:
            note = f"{len(N)} points: least squares with {len(N) - 3} degree(s) of freedom"
        if alpha <= 0:
            note += "; the loss does not fall with N (train longer, or use more data)"
    a = math.exp(la) * n0**alpha
    rmse = math.sqrt(sse(la, alpha, c) / len(N))
    return PowerLawFit(a=a, alpha=alpha, c=c, rmse=rmse, points=len(N), note=note)


def _polish(
    x: np.ndarray,
    y: np.ndarray,
    la: float,
    alpha: float,
    c: float,
    sse: Callable[[float, float, float], float],
) -> tuple[float, float, float]:
    """Damped Gauss-Newton (Levenberg-Marquardt) on (log a', alpha, c), keeping 0 <= c < min L."""
    p = np.array([la, alpha, c])
    best = sse(*p)
    lam = 1e-3
    for _ in range(100):
        e = np.exp(p[0] - p[1] * x)
        r = e + p[2] - y
        J = np.stack([e, -x * e, np.ones_like(x)], axis=1)
        JtJ, g = J.T @ J, J.T @ r
        step = np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), -g)
        q = p + step
        if 0 <= q[2] < y.min() and (val := sse(*q)) < best:
            improvement = best - val
            p, best, lam = q, val, lam / 3
            if improvement < 1e-15 * max(best, 1e-300):
                break
        else:
            lam *= 10
            if lam > 1e10:
                break
    return float(p[0]), float(p[1]), float(p[2])


# ---------------------------------------------------------------------------------- the ladder


def _tokenizer_auto() -> TokenizerConfig:
    return TokenizerConfig(kind="auto")


@dataclass
class ScalingOverrides:
    """The settings `lmforge scaling` passes on to every rung (its `--model.*`, `--train.*` ... flags)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: TokenizerConfig = field(default_factory=_tokenizer_auto)
    prep: PrepConfig = field(default_factory=PrepConfig)


@dataclass
class Rung:
    label: str
    target: int  # requested N
    params: int  # N of the built model (non-embedding, Kaplan)
    total_params: int
    n_layer: int
    d_model: int
    n_head: int
    steps: int
    capped: bool  # the budget rule wanted more than max_steps
    tokens: int  # training tokens seen
    compute: float  # training FLOPs: flops_per_token * tokens
    compute_6nd: float  # 6 * N * tokens
    val_loss: float | None
    train_loss: float | None
    seconds: float
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScalingResult:
    out: str
    data: str
    tokens_per_param: float
    max_steps: int
    train_tokens: int  # size of the training split
    rungs: list[Rung]
    fit: PowerLawFit | None
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rungs"] = [r.to_dict() for r in self.rungs]
        d["fit"] = self.fit.to_dict() if self.fit else None
        return d


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _prepare_shards(data: str, out: Path, cfg: Any, log: Callable[[str], None]) -> Path:
    """Shards for every rung: `data` itself when it is a shard directory, else `<out>/data`, built once."""
    from lmforge.data.shards import is_shard_dir, prepare
    from lmforge.tokenizer import train_tokenizer
    from lmforge.utils.io import read_json

    if is_shard_dir(data):
        return Path(data)
    shards = out / "data"
    if is_shard_dir(shards):
        sources = read_json(shards / "manifest.json").get("sources")
        if sources != [str(data)]:
            raise LmforgeError(
                f"{shards} was prepared from {sources}, not {data!r}; choose another --out or delete {shards}"
            )
        log(f"reusing the shards in {shards}")
        return shards
    t, prep = cfg.tokenizer, cfg.prep
    if t.kind == "auto":
        t.kind = "bpe"
    log(f"training a {t.kind} tokenizer (vocab {t.vocab_size}) on {data}, once for the whole ladder")
    tok = train_tokenizer(
        data, kind=t.kind, vocab_size=t.vocab_size, min_frequency=t.min_frequency, lowercase=t.lowercase,
        clean=prep.clean, txt_unit=prep.txt_unit, text_field=prep.text_field, encoding=prep.encoding,
    )  # fmt: skip
    prepare(
        data, tok, shards, clean=prep.clean, val_fraction=prep.val_fraction, text_field=prep.text_field,
        txt_unit=prep.txt_unit, encoding=prep.encoding, show_progress=False,
    )  # fmt: skip
    return shards


def _finished(run_dir: Path, model: ModelConfig, steps: int) -> dict[str, Any] | None:
    """The summary of a rung already trained to `steps` with this model (re-running skips it)."""
    from lmforge.run import model_config_of
    from lmforge.utils.io import read_json

    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "model.safetensors").is_file():
        return None
    saved, _ = model_config_of(run_dir)
    s = read_json(summary)
    ignore = {"vocab_size"}
    same = {k: v for k, v in to_dict(saved).items() if k not in ignore} == {
        k: v for k, v in to_dict(model).items() if k not in ignore
    }
    return s if same and s.get("steps") == steps else None


def scaling(
    data: str | Path,
    sizes: str | Sequence[str | int],
    out: str | Path,
    *,
    tokens_per_param: float = 20.0,
    max_steps: int = 2000,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> ScalingResult:
    """Train one decoder per size on the same shards and budget rule; fit and plot L(N).

    The Python twin of `lmforge scaling --data corpus/ --sizes 0.1M,0.3M,1M,3M --out runs/scaling`.
    `overrides` are nested or dotted `model.*`, `train.*`, `tokenizer.*`, `prep.*` settings applied
    to every rung (not the keys the ladder sets: see RESERVED). Rungs already trained with the same
    model and steps are reused, and an interrupted rung resumes, so re-running after a stop is cheap.
    """
    from lmforge.data.shards import Shards
    from lmforge.utils.io import atomic_write_json

    if float(tokens_per_param) <= 0:
        raise LmforgeError(
            f"--tokens_per_param={tokens_per_param} must be positive (20 is Chinchilla's ratio)"
        )
    if int(max_steps) < 1:
        raise LmforgeError(f"--max_steps={max_steps} must be at least 1")
    nested, cfg = _ladder_settings(overrides)
    seq_len = cfg.train.seq_len or cfg.model.max_len
    if seq_len > cfg.model.max_len:
        raise LmforgeError(
            f"train.seq_len={seq_len} exceeds model.max_len={cfg.model.max_len}; lower one or raise the other"
        )
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * seq_len
    # Plan every rung before touching the data, so a bad ladder fails in a second, not after prepare.
    plans = _plan_rungs(parse_sizes(sizes), cfg, tokens_per_param, tokens_per_step, int(max_steps))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards_dir = _prepare_shards(str(data), out, cfg, log)
    shards = Shards.open(shards_dir)
    if shards.num_tokens("val") < 2:
        raise LmforgeError(
            f"{shards_dir} has no validation split to fit on; prepare with --prep.val_fraction above 0"
        )
    rungs = [
        _train_rung(plan, out / plan[0], shards_dir, nested, cfg, tokens_per_step, seq_len, log)
        for plan in plans
    ]
    points = [(r.params, r.val_loss) for r in rungs if r.val_loss is not None]
    fit = fit_power_law(*zip(*points)) if len(points) >= 2 else None
    result = ScalingResult(
        out=str(out), data=str(data), tokens_per_param=float(tokens_per_param), max_steps=int(max_steps),
        train_tokens=int(shards.num_tokens("train")), rungs=rungs, fit=fit,
    )  # fmt: skip
    result.plots = [str(p) for p in plot_scaling(result, out / "plots")]
    atomic_write_json(out / "scaling.json", result.to_dict())
    return result


def _ladder_settings(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """The overrides as a nested dict, checked (none of the keys the ladder sets), and validated
    once as a PretrainConfig before any training."""
    from lmforge.config import set_dotted
    from lmforge.pretraining import PretrainConfig

    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            nested = deep_merge(nested, {key: value})
        else:
            set_dotted(nested, key, value)
    for key in _flatten(nested):
        if key in RESERVED:
            raise LmforgeError(
                f"--{key} is set by the scaling ladder for each size; drop it (use --sizes/--max_steps)"
            )
        if key.split(".")[0] not in ("model", "train", "tokenizer", "prep"):
            raise LmforgeError(
                f"--{key}: scaling passes only model.*, train.*, tokenizer.* and prep.* settings on"
            )
    cfg = from_dict(PretrainConfig, nested)
    if cfg.model.arch != "decoder":
        raise LmforgeError(
            f"--model.arch={cfg.model.arch}: the scaling ladder trains decoders; drop --model.arch"
        )
    return nested, cfg


def _plan_rungs(
    ladder: list[tuple[str, int]], cfg: Any, tokens_per_param: float, tokens_per_step: int, max_steps: int
) -> list[tuple[str, int, ModelConfig, int, int, bool]]:
    """(label, target, model, N, steps, capped) per size; two sizes with the same shape are an error."""
    plans = []
    for label, target in ladder:
        model = shape_for(target, cfg.model)
        n = count_params(model)
        steps, capped = budget_steps(n, tokens_per_param, tokens_per_step, max_steps)
        plans.append((label, target, model, n, steps, capped))
    shapes = [(p[2].n_layer, p[2].d_model) for p in plans]
    for i in range(1, len(shapes)):
        if shapes[i] == shapes[i - 1]:
            raise LmforgeError(
                f"--sizes {plans[i - 1][0]} and {plans[i][0]} give the same model (n_layer={shapes[i][0]}, "
                f"d_model={shapes[i][1]}); spread the sizes further apart"
            )
    return plans


def _train_rung(
    plan: tuple[str, int, ModelConfig, int, int, bool], run_dir: Path, shards_dir: Path, nested: dict[str, Any],
    cfg: Any, tokens_per_step: int, seq_len: int, log: Callable[[str], None],
) -> Rung:  # fmt: skip
    """Train one size (or reuse / resume its run) and read back its figures."""
    from lmforge.pretraining import pretrain

    label, target, model, n, steps, capped = plan
    log(
        f"[{label}] n_layer={model.n_layer} d_model={model.d_model} n_head={model.n_head}: N={n:,} "
        f"non-embedding parameters, {steps} steps of {tokens_per_step:,} tokens"
        + (" (capped by --max_steps)" if capped else "")
    )
    train = {
        "warmup_steps": min(100, max(1, steps // 10)),
        **_flatten(nested.get("train", {})),
        "max_steps": steps,
    }
    shape = {k: getattr(model, k) for k in ("n_layer", "d_model", "n_head")}
    run_overrides = {
        "data": str(shards_dir), "out": str(run_dir), "objective": "clm",
        "model": {**_flatten(nested.get("model", {})), **shape},
        "train": train, "tokenizer": to_dict(cfg.tokenizer), "prep": to_dict(cfg.prep),
    }  # fmt: skip
    summary = _finished(run_dir, model, steps)
    if summary is not None:
        log(f"[{label}] already trained ({run_dir}/summary.json); reusing it")
    else:
        resume = (run_dir / "train_state").is_dir()
        summary = pretrain(None, resume=resume, **run_overrides).to_dict()
    return _rung(label, target, n, model, steps, capped, summary, run_dir, seq_len)


def _rung(label: str, target: int, n: int, model: ModelConfig, steps: int, capped: bool,
          summary: dict[str, Any], run_dir: Path, seq_len: int) -> Rung:  # fmt: skip
    from lmforge.models import build_model
    from lmforge.run import model_config_of

    saved, _ = model_config_of(run_dir)  # with the vocabulary size training filled in
    with torch.device("meta"):
        built = build_model(saved)
    tokens = int(summary.get("tokens") or 0)
    return Rung(
        label=label, target=target, params=n, total_params=int(built.num_params()), n_layer=model.n_layer,
        d_model=model.d_model, n_head=model.n_head, steps=int(summary.get("steps") or steps), capped=capped,
        tokens=tokens, compute=float(built.flops_per_token(seq_len)) * tokens, compute_6nd=6.0 * n * tokens,
        val_loss=summary.get("val_loss"), train_loss=summary.get("train_loss"),
        seconds=round(float(summary.get("elapsed_s") or 0.0), 3), run_dir=str(run_dir),
    )  # fmt: skip


# ---------------------------------------------------------------------------------- plots


def plot_scaling(result: ScalingResult, plots: Path) -> list[Path]:
    """`loss_vs_params.png` (points and fit) and `loss_vs_compute.png` (training curves and final points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.train.logger import read_metrics
    from lmforge.utils.io import atomic_path

    plots.mkdir(parents=True, exist_ok=True)
    done = [r for r in result.rungs if r.val_loss is not None]
    paths = []

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    if done:
        ax.plot(
            [r.params for r in done], [r.val_loss for r in done], "o", ms=7, label="final validation loss"
        )
        for r in done:
            ax.annotate(
                r.label, (r.params, r.val_loss), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
    if result.fit and done:
        lo, hi = min(r.params for r in done) / 2, max(r.params for r in done) * 2
        xs = np.geomspace(lo, hi, 200)
        ax.plot(xs, result.fit.predict(xs), "-", lw=1.5, label=result.fit.formula())
        if result.fit.points >= 3:  # with two points c is fixed at 0, not fitted
            ax.axhline(result.fit.c, ls=":", lw=1, color="gray", label=f"c = {result.fit.c:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, plots / "loss_vs_params.png", atomic_path))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    for r in result.rungs:
        flops_per_token = r.compute / r.tokens if r.tokens else 0.0
        rows = [
            row
            for row in read_metrics(Path(r.run_dir) / "metrics.jsonl")
            if "loss" in row and "tokens" in row
        ]
        line = None
        if rows and flops_per_token:
            (line,) = ax.plot([row["tokens"] * flops_per_token for row in rows], [row["loss"] for row in rows],
                              lw=1, alpha=0.7, marker="." if len(rows) < 10 else None,
                              label=f"{r.label} (train)")  # fmt: skip
        if r.val_loss is not None and r.compute:
            ax.plot([r.compute], [r.val_loss], "o", ms=6, color=line.get_color() if line else None)
    ax.set_xscale("log")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("loss (nats/token); dots: final validation")
    ax.grid(alpha=0.3, which="both")
    if result.rungs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, plots / "loss_vs_compute.png", atomic_path))
    plt.close(fig)
    return paths


def _save(fig: Any, out: Path, atomic_path: Any) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def format_result(result: ScalingResult) -> str:
    """The human report: one row per size, then the fit."""
    head = ("size", "N", "layers", "d_model", "heads", "steps", "tokens", "FLOPs", "val_loss")
    rows = [
        (r.label, f"{r.params:,}", str(r.n_layer), str(r.d_model), str(r.n_head),
         f"{r.steps:,}" + ("*" if r.capped else ""), f"{r.tokens:,}", f"{r.compute:.3g}",
         f"{r.val_loss:.4f}" if r.val_loss is not None else "-")
        for r in result.rungs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *rows]]
    if any(r.capped for r in result.rungs):
        lines.append(f"* capped by --max_steps {result.max_steps} (the budget rule wanted more)")
    if result.fit:
        f = result.fit
        lines.append(f"fit: {f.formula()}  (rmse {f.rmse:.4f}; {f.note})")
    lines.append(f"wrote {Path(result.out) / 'scaling.json'} and {', '.join(result.plots)}")
    return "\n".join(lines)
