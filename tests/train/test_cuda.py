"""The CUDA paths: bf16 autocast, fused AdamW, torch.compile, resume, generation, NCCL and fp16 scaling.

These run only where a CUDA device is present; on a CPU-only machine they are skipped (the same
code paths run on CPU elsewhere in the suite).
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tests.conftest import make_tokens

from lmforge.data.batches import CausalLMBatches, eval_windows
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.weights import load_weights
from lmforge.objectives.clm import causal_lm
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

VOCAB = 64
CUDA = torch.device("cuda")


def _tokens(n: int = 6000, seed: int = 0) -> np.ndarray:
    return make_tokens(VOCAB, n, seed)


def _trainer(run_dir, steps, **train_kw):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=64, max_len=32, dropout=0.0)
    )
    settings = dict(
        max_steps=steps, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=2, log_every=5, eval_every=10,
        eval_batches=2, save_every=10, progress=False, tensorboard=False, plot=False, device="cuda",
    )  # fmt: skip
    cfg = TrainConfig(**{**settings, **train_kw})
    batches = CausalLMBatches(_tokens(), 32, 8, seed=cfg.seed)
    val = _tokens(1200, seed=1)
    return Trainer(
        model, batches, cfg, run_dir, objective=causal_lm(),
        val_batches=lambda: eval_windows(val, 32, 8, cfg.eval_batches),
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_training_on_cuda_learns_and_saves_cpu_loadable_weights(tmp_path, precision):
    t = _trainer(tmp_path, 60, precision=precision)
    assert next(t.model.parameters()).device.type == "cuda"
    result = t.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1.0, losses
    assert result.val_loss is not None and math.isfinite(result.val_loss)
    # The saved weights are fp32 on disk and load into a CPU model with the same outputs.
    cpu_model = build_model(t.model.config)
    load_weights(cpu_model, tmp_path / "model.safetensors")
    x = torch.from_numpy(_tokens(64, seed=3).astype(np.int64)).view(2, 32)
    with torch.no_grad():
        gpu_logits = t.model.eval()(x.to(CUDA)).float().cpu()
        cpu_logits = cpu_model.eval()(x)
    torch.testing.assert_close(cpu_logits, gpu_logits, atol=2e-3, rtol=2e-3)


def test_fused_adamw_is_used_on_cuda(tmp_path):
    t = _trainer(tmp_path, 1)
    assert t.optimizer.defaults.get("fused") is True


class Killed(Exception):
    pass


def test_resume_on_cuda_reaches_the_same_weights(tmp_path):
    from lmforge.objectives.clm import clm_loss

    straight = _trainer(tmp_path / "a", 20, precision="fp32")
    straight.fit()
    killed = _trainer(tmp_path / "b", 20, precision="fp32")
    calls = {"n": 0}

    def dies_in_step_13(model, batch):
        calls["n"] += 1
        if calls["n"] == 13:
            raise Killed
        return clm_loss(model, batch)

    killed.objective = dataclasses.replace(killed.objective, loss=dies_in_step_13)
    with pytest.raises(Killed):
        killed.fit()
    resumed = _trainer(tmp_path / "b", 20, precision="fp32")
    resumed.fit(resume=True)
    assert resumed.step == 20
    # Not bitwise: CUDA kernels may pick different reduction orders between processes.
    for (name, p1), p2 in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-5, msg=name)


def test_compiled_training_on_cuda_matches_eager_closely(tmp_path):
    eager = _trainer(tmp_path / "eager", 10, precision="fp32")
    eager.fit()
    compiled = _trainer(tmp_path / "compiled", 10, precision="fp32", compile=True)
    compiled.fit()
    for (name, p1), p2 in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-4, rtol=1e-3, msg=name)


def test_cached_generation_on_cuda_equals_full_recompute():
    from lmforge.infer.generate import GenerationConfig, generate_ids

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=64, max_len=64, position="rope",
                      norm="rmsnorm", activation="swiglu", n_kv_head=2)  # fmt: skip
    model = build_model(cfg).to(CUDA).eval()
    prompt = torch.tensor([[1, 2, 3, 4, 5]], device=CUDA)
    cached = torch.stack(
        list(generate_ids(model, prompt, GenerationConfig(max_new_tokens=20, temperature=0)))
    )
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(20):
            nxt = model(ids)[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert torch.equal(cached.squeeze(-1), ids[0, 5:])


def test_encoder_with_padding_on_cuda_matches_cpu():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=VOCAB, n_layer=2, n_head=2, d_model=32, max_len=16,
                      type_vocab_size=2, norm_position="post", dropout=0.0)  # fmt: skip
    model = build_model(cfg).eval()
    ids = torch.randint(5, VOCAB, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1, 10:] = False
    mask[2, 4:] = False
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
        out = model.to(CUDA)(ids.to(CUDA), attention_mask=mask.to(CUDA))
    torch.testing.assert_close(out.cpu()[mask], ref[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs (NCCL refuses two ranks on one)"
)
def test_ddp_with_nccl_runs_under_torchrun(tmp_path):
    script = tmp_path / "train_nccl.py"
    script.write_text(textwrap.dedent(
        """
        import sys, numpy as np, torch
        from lmforge.data.batches import CausalLMBatches, eval_windows
        from lmforge.objectives.clm import causal_lm
        from lmforge.models import build_model
        from lmforge.models.config import ModelConfig
        from lmforge.train.config import TrainConfig
        from lmforge.train.parallel import setup_distributed, teardown_distributed
        from lmforge.train.trainer import Trainer

        info, device = setup_distributed("cuda")
        assert torch.distributed.get_backend() == "nccl", torch.distributed.get_backend()
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_len=16))
        tokens = (np.arange(5000) * 7 % 64).astype(np.uint16)
        cfg = TrainConfig(max_steps=6, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=1, log_every=2,
                          eval_every=3, save_every=3, progress=False, tensorboard=False, plot=False)
        batches = CausalLMBatches(tokens, 16, 4, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        val = lambda: eval_windows(tokens[:400], 16, 4, 2, rank=info.rank, world_size=info.world_size)
        Trainer(model, batches, cfg, sys.argv[1], objective=causal_lm(), val_batches=val, device=device,
                dist=info).fit()
        teardown_distributed()
        """
    ))  # fmt: skip
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(run),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "model.safetensors").is_file()
