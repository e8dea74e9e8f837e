"""ONNX export: decoders with past keys/values (generation runs in onnxruntime), encoders, task heads.

`export_onnx(model, out_dir)` writes `model.onnx` (weights inside, or beside it as
`model.onnx.data` past 2 GB) and `onnx_config.json` (what the inputs and outputs are, so a
runtime needs no lmforge), through `torch.onnx.export`'s dynamo exporter with dynamic batch and
sequence axes. The graphs are built from the model's own modules, wrapped only to fix their
inputs:

- a decoder (`Transformer`): `input_ids` (B, T), `attention_mask` (B, P + T) (1 = real, left
  padding allowed), `position_ids` (B, T), and per layer `past_key.i` / `past_value.i`
  (B, kv_heads, P, head_dim), P = 0 on the first call; outputs `logits` (B, T, V) and
  `present_key.i` / `present_value.i` (B, kv_heads, P + T, head_dim). `OnnxDecoder` runs greedy
  decoding with them in onnxruntime;
- an encoder (`Encoder`): `input_ids`, `attention_mask`, `token_type_ids` (B, T) ->
  `last_hidden_state` (B, T, d) (zeros at padding), and with `mlm_head` the masked-LM `logits`
  (B, T, V);
- a fine-tuned task model: the same inputs -> classification `logits` (B, labels), token
  `emissions` (B, T, labels), or QA `start_logits` / `end_logits` (B, T).

Attention over padding uses an explicit mask (the encoder's unpadded path gathers the real tokens
by a data-dependent index, which a static graph cannot hold). T5 relative positions and recurrent
baselines are not exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.utils.io import atomic_write_json

OPSET = 18


class _PastKV:
    """A cache view for export: each layer's keys/values are the past ones with this call's
    appended; the concatenations are the graph's `present` outputs."""

    def __init__(self, past: tuple[torch.Tensor, ...]):
        self.past, self.present = past, [None] * len(past)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.cat([self.past[2 * layer], k], dim=2)
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present[2 * layer], self.present[2 * layer + 1] = k, v
        return k, v


class DecoderWithPast(nn.Module):
    """A decoder's step as a graph: the new tokens, the mask over past and new positions, their
    positions and the past keys/values in; logits and the grown keys/values out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        m = self.model
        T, S = input_ids.shape[1], attention_mask.shape[1]
        x = m.embed(input_ids, positions=position_ids)
        query_at = torch.arange(T, device=x.device) + (S - T)  # each new token's column among S
        keys = torch.arange(S, device=x.device)
        causal = keys[None, :] <= query_at[:, None]  # (T, S)
        own = keys[None, :] == query_at[:, None]  # a left-padded query still sees itself (no NaN)
        mask = (attention_mask.bool()[:, None, None, :] & causal) | own  # (B, 1, T, S)
        cache = _PastKV(past)
        rope = m.rotary(T, 0, position_ids)
        for block in m.blocks:
            x = block(x, rope=rope, causal=False, attn_mask=mask, cache=cache)
        return (m.lm_head(m.norm_f(x)), *cache.present)


def _padded_hidden(stack: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """An encoder's hidden states over a padded batch with an explicit key mask (zeros at padding)."""
    x = stack.embed(input_ids, token_type_ids)
    real = attention_mask.bool()
    h = stack.run_blocks(x, rope=stack.rotary(input_ids.size(1)), attn_mask=real[:, None, None, :])
    return h * real[..., None].to(h.dtype)


class EncoderGraph(nn.Module):
    """An encoder's hidden states, and with `mlm_head` the masked-LM logits of every position."""

    def __init__(self, model: nn.Module, mlm_head: bool = False):
        super().__init__()
        self.model, self.mlm_head = model, mlm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        h = _padded_hidden(self.model, input_ids, attention_mask, token_type_ids)
        return (h, self.model.mlm_logits(h)) if self.mlm_head else (h,)


class TaskGraph(nn.Module):
    """A fine-tuned head on its backbone: the head's outputs, in `names` order."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        backbone = self.model.backbone
        if backbone.arch == "encoder":
            h = _padded_hidden(backbone.model, input_ids, attention_mask, token_type_ids)
        else:
            h = backbone.model.hidden_states(input_ids)
        real = attention_mask.bool()
        batch = {"input_ids": input_ids, "attention_mask": real, "token_type_ids": token_type_ids,
                 "lengths": real.sum(1)}  # fmt: skip
        outputs = self.model.head_outputs(h, batch)
        return tuple(outputs[n] for n in self.names)


def _kind(model: nn.Module) -> str:
    from lmforge.models.encoder import Encoder
    from lmforge.models.heads import TaskModel
    from lmforge.models.transformer import Transformer

    if isinstance(model, TaskModel):
        if model.backbone.arch == "encoder-decoder" or not hasattr(model, "head_outputs"):
            raise LmforgeError(
                f"{type(model).__name__} runs cannot be exported to ONNX; export classification, NER and QA "
                "runs, or a chat run's decoder (lmforge export onnx on the chat run)"
            )
        return "task"
    if isinstance(model, Transformer):
        return "decoder"
    if isinstance(model, Encoder):
        return "encoder"
    raise LmforgeError(
        f"{type(model).__name__} cannot be exported to ONNX: decoders, encoders and their task runs can"
    )


def export_onnx(model: nn.Module, out_dir: str | Path, *, opset: int = OPSET, mlm_head: bool = False) -> Path:
    """Write `model` (a decoder, an encoder or a task model; see the module docstring) as
    out_dir/model.onnx with its onnx_config.json; returns out_dir. An encoder's graph gives its
    hidden states, and with `mlm_head` also the masked-LM logits (a (B, T, vocab) output that
    costs more than the encoder itself at BERT's sizes, so it is left out unless asked for)."""
    from torch.export import Dim

    model = getattr(model, "_orig_mod", model).eval()
    kind = _kind(model)
    stacks = [model.backbone.model] if kind == "task" else [model]
    if any(getattr(s, "rel_bias", None) is not None for s in stacks):
        raise LmforgeError(
            "models with T5 relative positions cannot be exported to ONNX (their bias depends on the cache)"
        )
    cfg = stacks[0].config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Dynamic sizes, their relations (the mask covers past + new positions) inferred by the export.
    batch = seq = Dim.AUTO
    B, T = 2, 5
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    meta: dict[str, Any] = {"format": "lmforge-onnx", "kind": kind, "opset": opset, "max_len": cfg.max_len,
                            "vocab_size": cfg.vocab_size}  # fmt: skip
    if kind == "decoder":
        P = 3
        heads, hd = cfg.n_kv_head or cfg.n_head, cfg.head_dim
        past = tuple(torch.zeros(B, heads, P, hd) for _ in range(2 * cfg.n_layer))
        past_names = [f"past_{kv}.{i}" for i in range(cfg.n_layer) for kv in ("key", "value")]
        present_names = [n.replace("past_", "present_") for n in past_names]
        graph: nn.Module = DecoderWithPast(model)
        past_len = total = Dim.AUTO
        args = (ids, torch.ones(B, P + T, dtype=torch.long), torch.arange(P, P + T).expand(B, T), *past)
        names = ["input_ids", "attention_mask", "position_ids", *past_names]
        shapes: tuple[Any, ...] = (
            {0: batch, 1: seq},
            {0: batch, 1: total},
            {0: batch, 1: seq},
            tuple({0: batch, 2: past_len} for _ in past),
        )  # *past: one argument
        outputs = ["logits", *present_names]
        meta.update(n_layer=cfg.n_layer, kv_heads=heads, head_dim=hd, past=past_names, present=present_names)
    else:
        names = ["input_ids", "attention_mask", "token_type_ids"]
        args = (ids, mask, torch.zeros(B, T, dtype=torch.long))
        shapes = ({0: batch, 1: seq},) * 3
        if kind == "encoder":
            graph = EncoderGraph(model, mlm_head)
            outputs = ["last_hidden_state", "logits"] if mlm_head else ["last_hidden_state"]
        else:
            outputs = list(model.export_outputs)
            graph = TaskGraph(model, tuple(outputs))
    meta.update(inputs=names, outputs=outputs)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            graph, args, input_names=names, output_names=outputs, dynamic_shapes=shapes, opset_version=opset,
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
    program.save(str(out / "model.onnx"), external_data=_too_big(model))
    atomic_write_json(out / "onnx_config.json", meta)
    return out


def _quiet() -> Any:
    """The exporter's progress lines and warnings (torchvision absent, ...) say nothing to a user."""
    import contextlib
    import io
    import logging
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, level)
    return stack


def check_onnx(model: nn.Module, out_dir: str | Path, *, length: int = 16) -> float:
    """The largest difference between onnxruntime's outputs and the model's on a random padded
    batch of two (the first output: logits, hidden states or the head's): export's self-check."""
    import numpy as np
    import onnxruntime as ort

    out = Path(out_dir)
    meta = json.loads((out / "onnx_config.json").read_text(encoding="utf-8"))
    model = getattr(model, "_orig_mod", model).eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    T = min(length, meta["max_len"])
    ids = torch.randint(0, meta["vocab_size"], (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, : T // 2] = 0  # left padding (a decoder's) or padding (an encoder's), the second row
    if meta["kind"] != "decoder":
        mask = mask.flip(1)
    if meta["kind"] == "decoder":
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        graph: nn.Module = DecoderWithPast(model)
        past = [np.zeros((2, meta["kv_heads"], 0, meta["head_dim"]), np.float32) for _ in meta["past"]]
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
        feeds.update(zip(meta["past"], past))
        args: tuple[Any, ...] = (ids, mask, positions, *[torch.from_numpy(p) for p in past])
    else:
        types = torch.zeros_like(ids)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
        if meta["kind"] == "encoder":
            graph = EncoderGraph(model, mlm_head=len(meta["outputs"]) > 1)
        else:
            graph = TaskGraph(model, tuple(meta["outputs"]))
        args = (ids, mask, types)
    with torch.no_grad():
        ours = graph(*args)[0]
    theirs = session.run([meta["outputs"][0]], feeds)[0]
    real = mask.bool().numpy() if ours.dim() >= 2 and ours.shape[:2] == ids.shape else None
    diff = np.abs(ours.numpy() - theirs)
    return float((diff[real] if real is not None else diff).max())


def _too_big(model: nn.Module) -> bool:
    """Protobuf files stop at 2 GB: past that the weights go to model.onnx.data."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > (1 << 31) - (64 << 20)


class OnnxDecoder:
    """An exported decoder in onnxruntime: `step` feeds tokens with the past, `greedy` decodes."""

    def __init__(self, path: str | Path, *, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        self.meta = json.loads((path / "onnx_config.json").read_text(encoding="utf-8"))
        if self.meta.get("kind") != "decoder":
            raise LmforgeError(f"{path}: not an exported decoder (kind {self.meta.get('kind')!r})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def empty_past(self, batch: int) -> list[Any]:
        import numpy as np

        shape = (batch, self.meta["kv_heads"], 0, self.meta["head_dim"])
        return [np.zeros(shape, np.float32) for _ in self.meta["past"]]

    def step(self, ids: Any, mask: Any, positions: Any, past: list[Any]) -> tuple[Any, list[Any]]:
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feeds.update(zip(self.meta["past"], past))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], list[Any]]:
        """Greedy continuation of one prompt: (token ids, the last-position logits of each step)."""
        import numpy as np

        ids = np.asarray([prompt], np.int64)
        mask = np.ones_like(ids)
        positions = np.arange(len(prompt), dtype=np.int64)[None]
        logits, past = self.step(ids, mask, positions, self.empty_past(1))
        out, steps = [], []
        for _ in range(new_tokens):
            last = logits[0, -1]
            steps.append(last)
            token = int(last.argmax())
            out.append(token)
            n = mask.shape[1]
            mask = np.ones((1, n + 1), np.int64)
            logits, past = self.step(np.asarray([[token]], np.int64), mask, np.asarray([[n]], np.int64), past)
        return out, steps


__all__ = ["DecoderWithPast", "EncoderGraph", "OnnxDecoder", "TaskGraph", "check_onnx", "export_onnx"]
