"""Rollout on vLLM (`rollout=vllm`): start-up refusals (always run), and the integration test (marker `vllm`,
its own CI step) on a real vLLM server in its own environment (`bash scripts/setup_vllm.sh`): 3 ALIVE steps
on the tiny model where, after every step, each role's greedy outputs from the server equal
transformers+PEFT's on the trained adapters, the engine-vs-learner log-prob gap stays below tolerance, and
the server is gone after the run.

    .venv/bin/python -m pytest -m vllm tests/test_vllm.py     # after bash scripts/setup_vllm.sh
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from functools import cache

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, WARM120

VLLM_PYTHON = os.environ.get("ALIVE_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
PROMPTS = ["Question: 478 + 356", "Question: 12 + 89", "Question: 305 + 617", "Question: 66 + 45",
           "Question: 901 + 99", "Question: 250 + 250", "Question: 38 + 761", "Question: 444 + 557"]


@cache
def vllm_missing() -> str | None:
    """Why vLLM cannot be used here, or None."""
    if not os.path.exists(VLLM_PYTHON):
        return f"no vLLM environment at {VLLM_PYTHON}: run `bash scripts/setup_vllm.sh` (or set ALIVE_VLLM_PYTHON)"
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        return f"`import vllm` fails in {VLLM_PYTHON}: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def _vllm_cfg(small_cfg, *extra):
    # a short warm start: from random weights every answer is wrong, no sample has an advantage and none
    # is scored, so the log-prob gap would be measured on nothing
    return small_cfg(*WARM120, "rollout=vllm", f"rollout.vllm.python={VLLM_PYTHON}", "rollout.vllm.startup_timeout_s=900",
                     "+rollout.vllm.env.VLLM_CPU_KVCACHE_SPACE=1", "hardware.torch_threads=1",
                     "trainer.generation.temperature=0.7", *extra)


# -- always: what rollout=vllm refuses before it starts anything ----------------------------------------
@pytest.mark.parametrize("override, message", [
    ("model.finetune=full", "model.finetune=full"),
    ("model.lora.r=32", "above the server's rollout.vllm.max_lora_rank=16"),
    ("rollout.vllm.max_lora_rank=24", "vLLM accepts"),
])
def test_rollout_vllm_refuses_what_a_server_cannot_serve(small_cfg, override, message):
    from alive_exp.train import build

    cfg = small_cfg("rollout=vllm", "rollout.vllm.python=/nonexistent/python", override)
    with pytest.raises(ValueError, match=message):
        build(cfg)


def test_a_missing_vllm_environment_or_a_dead_url_is_a_clear_error(small_cfg):
    from alive_exp.train import build
    from alive_exp.vllm_rollout import VLLMServerError

    with pytest.raises(VLLMServerError, match="setup_vllm.sh"):
        build(small_cfg("rollout=vllm", "rollout.vllm.python=/nonexistent/python"))
    with pytest.raises(VLLMServerError, match="not healthy"):
        build(small_cfg("rollout=vllm", "rollout.vllm.url=http://127.0.0.1:9", "rollout.vllm.startup_timeout_s=2"))


def test_a_gap_above_the_tolerance_stops_the_run_naming_it(small_cfg):
    from alive_exp.train import run

    cfg = small_cfg(*WARM120, "trainer.max_steps=2", "trainer.generation.temperature=0.7",
                    "rollout.max_logprob_gap=1e-12", "trainer.eval_at_end=false")
    with pytest.raises(RuntimeError, match="off-policy at step 0.*rollout.max_logprob_gap=1e-12"):
        run(cfg)


# -- a real server ----------------------------------------------------------------------------------
class CompareEachStep(pl.Callback):
    """After each step: every role's greedy outputs on PROMPTS, from the server and from transformers+PEFT
    on the module's own (just trained) adapters."""

    def __init__(self) -> None:
        self.mismatches: list[tuple[int, str, int]] = []
        self.checked = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        from alive_exp.rollout import Generator

        hf = Generator(module.model, module.tokenizer)
        for role in ("constructor", "solver", "reviewer"):
            module.use_adapter(role)
            served = [c[0].completion_ids for c in module.generator.generate(PROMPTS, max_new_tokens=24, temperature=0)]
            local = [c[0].completion_ids for c in hf.generate(PROMPTS, max_new_tokens=24, temperature=0)]
            self.mismatches += [(module.alive_step, role, i) for i, (a, b) in enumerate(zip(served, local)) if a != b]
            self.checked += len(PROMPTS)


@pytest.mark.vllm
@pytest.mark.slow
def test_three_alive_steps_on_vllm_serve_the_trained_adapters(small_cfg):
    if vllm_missing():
        pytest.skip(vllm_missing())
    from alive_exp.data import StepIndices
    from alive_exp.train import build

    cfg = _vllm_cfg(small_cfg, "trainer.max_steps=3", "trainer.eval_at_end=false")
    module = build(cfg, evaluate=False)
    server = module.generator.server
    try:
        before = {n: p.detach().clone() for n, p in module.model.named_parameters() if ".lora_" in n}
        check = CompareEachStep()
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[check], max_epochs=1, max_steps=-1,
                             enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                             num_sanity_val_steps=0)
        trainer.fit(module, torch.utils.data.DataLoader(StepIndices(module, 3), batch_size=None))
        moved = [n for n, p in module.model.named_parameters() if ".lora_" in n and not torch.equal(p, before[n])]
        assert moved, "no adapter was trained: the comparison would not show that syncing works"
        assert check.checked == 3 * 3 * len(PROMPTS) and check.mismatches == []
        gaps = [h["rollout/logprob_gap_mean"] for h in module.history]
        assert all(h["rollout/logprob_gap_tokens"] > 0 for h in module.history)
        assert max(gaps) < cfg.rollout.max_logprob_gap, gaps
        assert sum(h["rollout/syncs"] for h in module.history) > 0
    finally:
        module.generator.close()
    assert server.process.poll() is not None


@pytest.mark.vllm
@pytest.mark.slow
def test_a_run_on_vllm_evaluates_through_it_and_stops_its_server(small_cfg, tmp_path):
    if vllm_missing():
        pytest.skip(vllm_missing())
    from alive_exp.train import run

    final = run(_vllm_cfg(small_cfg, "trainer.max_steps=1", "benchmark.eval_size=2", "benchmark.pass_k=[1]"))
    assert "eval/math_heldout/accuracy" in final and final["rollout/syncs"] > 0
    info = json.loads(next(tmp_path.rglob("vllm_server.json")).read_text())
    assert info["started_here"]
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{info['url']}/health", timeout=2)
