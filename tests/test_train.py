"""The run path end to end: train.py in a temporary folder, the MLflow run it leaves, and RL that learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from alive_exp import rewards
from alive_exp.train import run
from conftest import WARM120
from conftest import REPO


def only_run(root):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("alive")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_train_py_end_to_end_leaves_one_mlflow_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "+experiment=math", "trainer.max_steps=2", f"paths.root_dir={tmp_path}",
         "benchmark.train_docs=100", "benchmark.eval_size=4", "trainer.docs_per_step=4", "trainer.progress_bar=false",
         "trainer.generation.solver_tokens=16", "trainer.generation.reviewer_tokens=16",
         # +experiment=math starts from the cached warm start; a short one keeps the test fast
         "warmstart.steps=4", "warmstart.eval_size=4", "trainer.max_tasks_per_step=4", "trainer.solutions_per_task=4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, r = only_run(tmp_path)
    assert r.info.status == "FINISHED"
    assert r.data.params["reward.mode"] == "scalar" and r.data.params["seed"] == "0"
    assert len(r.data.params) > 50
    assert r.data.tags.get("mlflow.source.git.commit")
    for key in ["train/reward_mean", "train/reward_std", "train/loss", "train/kl", "tokens/solver",
                "tokens/constructor", "tokens/reviewer", "time/solve", "time/update"]:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
        assert sorted(steps) == [1, 2], key
    assert "eval/math_heldout/accuracy" in r.data.metrics
    (warm,) = [p for p in (tmp_path / "data" / "warmstart").iterdir() if p.is_dir()]  # beside it: its lock file
    warm_metrics = json.loads((warm / "metrics.json").read_text())
    assert warm_metrics["steps"] == 4
    # every role's readiness at the warm start: in metrics.json, logged at step 0 and in the run's last lines
    for role in ("reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps", "missing_verdicts"):
        assert 0.0 <= warm_metrics[role] <= 1.0
        assert r.data.metrics[f"warmstart/{role}"] == pytest.approx(warm_metrics[role])
    assert "warm start, 4 steps, not every floor held" in proc.stdout and "with the reference" in proc.stdout
    assert r.data.params["warmstart.enabled"] == "True"
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "transcripts.json", "final_metrics.json"} <= artifacts
    table = json.loads(open(client.download_artifacts(r.info.run_id, "transcripts.json", str(tmp_path))).read())
    assert {"prompt", "completion", "reward", "phase"} <= set(table["columns"])
    assert {row[table["columns"].index("phase")] for row in table["data"]} >= {"construct", "solve", "review"}
    assert (tmp_path / "outputs" / "train").exists()  # Hydra output under the root, checkpoints inside
    assert list((tmp_path / "outputs" / "train").glob("*/checkpoints/last.ckpt"))


@rewards.reward_mode("lowercase")
class Lowercase(rewards.RewardMode):
    """Synthetic reward the tiny model can satisfy: the share of lowercase ASCII letters it writes."""

    def solver_rewards(self, prompts, completions, *, correct, critiques):
        return [sum(ch.islower() and ch.isascii() for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.slow
def test_policy_gradient_raises_a_satisfiable_reward(small_cfg):
    cfg = small_cfg(
        "reward.mode=lowercase", "model.finetune=full", "trainer.max_steps=20", "trainer.optim.solver.lr=1e-3",
        "trainer.eval_at_end=false", "trainer.constructor=rule", "trainer.docs_per_step=8",
        "trainer.max_tasks_per_step=8", "trainer.solutions_per_task=8", "trainer.generation.solver_tokens=8",
        "trainer.generation.reviewer_tokens=8", "trainer.checkpoint_every=0", "seed=0",
    )
    run(cfg)
    client, r = only_run(cfg.paths.root_dir)
    curve = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "train/reward_mean"), key=lambda m: m.step)]
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last > first + 0.1, curve


def test_hub_model_offline_fails_naming_the_model_and_the_way_out(tmp_path, monkeypatch):
    from alive_exp import models
    from conftest import compose_cfg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_cfg(["model=qwen2.5-0.5b"], tmp_path)
    with pytest.raises(RuntimeError) as err:
        models.load_base(cfg.model, tmp_path, ["math"])
    assert "Qwen/Qwen2.5-0.5B-Instruct" in str(err.value) and "model=tiny" in str(err.value)


def test_warm_start_cache_key_ignores_the_time_budget_only(small_cfg):
    from alive_exp.warmstart import warmstart_dir

    base = warmstart_dir(small_cfg())
    assert warmstart_dir(small_cfg("warmstart.max_minutes=3")) == base
    assert warmstart_dir(small_cfg("warmstart.steps=7")) != base
    assert warmstart_dir(small_cfg("warmstart.lr=1e-4")) != base


def _warm(small_cfg, data, *overrides):
    from safetensors.torch import load_file

    from alive_exp.warmstart import build_warmstart

    cfg = small_cfg("warmstart.steps=4", "warmstart.batch_size=8", "warmstart.eval_size=4", "warmstart.train_docs=100",
                    "warmstart.warmup_steps=2", "hardware.torch_threads=1", f"paths.data_dir={data}", *overrides)
    path = build_warmstart(cfg, progress=False)
    return path, load_file(str(path / "model.safetensors"))


def test_warm_start_is_a_function_of_its_config_seed_and_threads(small_cfg, tmp_path):
    from alive_exp.warmstart import warmstart_dir

    a_path, a = _warm(small_cfg, tmp_path / "a")
    b_path, b = _warm(small_cfg, tmp_path / "b")  # built again from nothing, tiny model included
    assert a_path.name == b_path.name and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((a_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["threads"] == 1 and metrics["train_seconds"] > 0
    c_path, c = _warm(small_cfg, tmp_path / "a", "seed=1")  # another run seed: another warm start
    assert c_path != a_path and any(not torch.equal(a[k], c[k]) for k in a)
    assert warmstart_dir(small_cfg("hardware.torch_threads=2")) != warmstart_dir(small_cfg("hardware.torch_threads=1"))


def test_warm_start_overrunning_its_time_budget_fails_and_caches_nothing(small_cfg, tmp_path):
    with pytest.raises(RuntimeError, match="max_minutes"):
        _warm(small_cfg, tmp_path, "warmstart.max_minutes=0.00001")
    assert not [p for p in (tmp_path / "warmstart").iterdir() if p.is_dir()]


def test_profile_switch_writes_operator_tables_per_phase_and_times_each_role(small_cfg):
    cfg = small_cfg("trainer.max_steps=3", "trainer.profile=true", "trainer.profile_steps=1", "trainer.eval_at_end=false",
                    "trainer.checkpoint_every=0", "reward=verbal")
    final = run(cfg)
    client, r = only_run(cfg.paths.root_dir)
    tables = {a.path for a in client.list_artifacts(r.info.run_id, "profile")}
    # step 0 (first generate at each shape) is never profiled; step 1 is, one table per phase
    assert tables == {f"profile/step1_{p}.txt" for p in ("construct", "solve", "probe", "review", "refine", "samples", "update")}
    text = open(client.download_artifacts(r.info.run_id, "profile/step1_solve.txt", cfg.paths.root_dir)).read()
    assert "aten::" in text and "Self CPU" in text, text
    for key in ("time/samples", "time/update", "time/update/solver", "time/update/reviewer", "time/solve_share"):
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2, 3], key
    # (the last step is not profiled: a profiled step also pays for writing its tables)
    # the roles' update times are parts of the update phase, and phases are parts of the step
    assert final["time/update/solver"] + final["time/update/reviewer"] <= final["time/update"] + 1e-6
    shares = sum(final[f"time/{p}_share"] for p in ("construct", "solve", "probe", "review", "refine", "samples", "update"))
    assert 0.5 < shares <= 1.0 + 1e-6
    tokens = sum(final[f"tokens/{r}_share"] for r in ("constructor", "solver", "reviewer", "refine", "probe"))
    assert abs(tokens - 1.0) < 1e-6 and final["tokens/reviewer_share"] > 0


def test_warm_start_stops_at_the_first_check_reaching_its_validation_accuracy(small_cfg, tmp_path):
    # stop_accuracy 0 (and no floors, on suites or roles) is reached at the first check: the build stops there
    # and records the check
    path, _ = _warm(small_cfg, tmp_path, "warmstart.steps=12", "warmstart.stop_accuracy=0.0", "warmstart.check_from=6",
                    "warmstart.check_every=3", "warmstart.check_size=4", "~warmstart.stop_floors.math_longer_validation",
                    "warmstart.role_floors=null", "warmstart.max_missing_verdicts=null")
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["steps"] == 6 and [c["step"] for c in metrics["validation_checks"]] == [6]
    # an accuracy above 1 is never reached: every step runs, every check is recorded
    path, _ = _warm(small_cfg, tmp_path, "warmstart.steps=12", "warmstart.stop_accuracy=1.01", "warmstart.check_from=6",
                    "warmstart.check_every=3", "warmstart.check_size=4")
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["steps"] == 12 and [c["step"] for c in metrics["validation_checks"]] == [6, 9, 12]
    # a floor on a generalization suite's validation twin that is never reached keeps it going; each check
    # records both suites' accuracy
    path, _ = _warm(small_cfg, tmp_path, "warmstart.steps=9", "warmstart.stop_accuracy=0.0", "warmstart.check_from=6",
                    "warmstart.check_every=3", "warmstart.check_size=4",
                    "warmstart.stop_floors.math_longer_validation=1.01")
    checks = json.loads((path / "metrics.json").read_text())["validation_checks"]
    assert [c["step"] for c in checks] == [6, 9]
    assert all(set(c) == {"step", "seconds", "math_validation", "math_longer_validation", "unmet", "mix"} for c in checks)
    assert all(c["unmet"].startswith("math_longer_validation ") for c in checks)  # the check names what failed
    with pytest.raises(ValueError, match="not validation suites"):
        _warm(small_cfg, tmp_path, "warmstart.stop_accuracy=0.0", "+warmstart.stop_floors.math_longer=0.1")
    with pytest.raises(ValueError, match="validation suite"):
        _warm(small_cfg, tmp_path, "warmstart.stop_accuracy=0.3", "benchmark.options.sources=[basic_arithmetic]")


def test_the_role_phase_runs_while_the_solver_holds_its_floors_and_gives_it_back_its_transcripts_after(
        small_cfg, tmp_path, monkeypatch):
    """`warmstart.role_mix` trains the steps after a check where the solver's floors held; after a check where
    they did not, the steps train on `mix` again (without its own transcripts the solver drifts out of its
    band: docs/learning_investigation.md, round 4). The checks' outcomes are scripted; the build is real."""
    from alive_exp import readiness, warmstart

    script = iter([True, False, True, True])
    mixes = []

    def scripted(self, step, score_all=False):
        self.solver_holds = next(script)
        return False, {"math_validation": 0.5 if self.solver_holds else 0.1}

    real_set_mix = warmstart.Transcripts.set_mix

    def recorded(self, mix):
        mixes.append(dict(mix))
        real_set_mix(self, mix)

    monkeypatch.setattr(readiness.StoppingRule, "__call__", scripted)
    monkeypatch.setattr(warmstart.Transcripts, "set_mix", recorded)
    role_mix = "{constructor: 0.0, solver: 0.0, reviewer: 1.0, reviewer_blind: 0.0, refiner: 0.0, fcp_solver: 0.0}"
    path, _ = _warm(small_cfg, tmp_path, "warmstart.steps=12", "warmstart.stop_accuracy=0.3", "warmstart.check_from=3",
                    "warmstart.check_every=3", f"warmstart.role_mix={role_mix}")
    checks = json.loads((path / "metrics.json").read_text())["validation_checks"]
    assert [c["mix"] for c in checks] == ["roles", "all", "roles", "roles"]
    main = mixes[0]  # the stream starts on `mix`
    roles = {**{k: 0.0 for k in main}, "reviewer": 1.0}
    assert main["solver"] > 0 and mixes[1:] == [roles, main, roles, roles]


def test_solver_only_steps_write_no_reviews_and_train_no_reviewer(small_cfg):
    final = run(small_cfg("trainer.max_steps=2", "trainer.reviews=false", "trainer.constructor=rule",
                          "trainer.eval_at_end=false", "trainer.checkpoint_every=0"))
    assert final["tokens/reviewer"] == 0 and final["update/reviewer/samples"] == 0
    assert final["tokens/solver"] > 0 and final["update/solver/samples"] > 0
    with pytest.raises(ValueError, match="reward=scalar or reward=sft"):
        run(small_cfg("trainer.reviews=false", "reward=verbal"))


def test_the_fast_update_trains_the_adapters_of_the_plain_update(small_cfg, tmp_path):
    """Shared prompt prefixes and fused LoRA layers on (the defaults) against both off: the same adapters."""
    from safetensors.torch import load_file

    def adapters(share: bool):
        # a reward the untrained model meets (varied solver advantages), oracle critiques for the reviewer
        cfg = small_cfg("trainer.max_steps=5", f"trainer.share_prompt_prefix={share}", f"trainer.fused_lora={share}",
                        "trainer.eval_at_end=false",
                        "reward.mode=lowercase", "trainer.warmup_steps=5",
                        "trainer.checkpoint_every=0", "trainer.blind_review_share=0.5", "model.finetune=lora",
                        f"paths.output_dir={tmp_path}/{share}", "trainer.optim.solver.lr=3e-4",
                        "trainer.optim.reviewer.lr=3e-4", "trainer.optim.constructor.lr=3e-4")
        final = run(cfg)
        files = sorted((tmp_path / str(share) / "policy").glob("**/adapter_model.safetensors"))
        assert files and final["update/reviewer/trained_samples"] > 0 and final["update/solver/trained_samples"] > 0
        return {str(f.relative_to(tmp_path / str(share))): load_file(str(f)) for f in files}

    plain, shared = adapters(False), adapters(True)
    assert plain.keys() == shared.keys()
    worst = max(float((plain[f][k] - shared[f][k]).abs().max()) for f in plain for k in plain[f])
    moved = max(float(v.abs().max()) for f in plain for k, v in plain[f].items() if "lora_B" in k)
    # the gradients agree to ~1e-8 (tests/test_losses.py); Adam's steps are near sign(gradient) where a
    # gradient is tiny, so 5 steps amplify rounding to a few 1e-5 on such weights; a wrong prefix or position
    # moves them by the scale of training itself (> 1e-3)
    assert moved > 1e-3 and worst < 1e-4, (moved, worst)


def test_ppo_epochs_take_more_optimizer_steps_per_rollout_and_the_clip_binds(small_cfg):
    # a short warm start, so reviews parse and the reviewer has policy-gradient samples with non-zero advantage
    # one step: both runs train on the same rollout, so the second epoch's ratios are what moved
    over = (*WARM120, "trainer.max_steps=1", "reward=scalar", "trainer.eval_at_end=false", "trainer.checkpoint_every=0",
            "reward.clip_eps=0.01", "trainer.optim.reviewer.lr=1e-2")
    once = run(small_cfg(*over))
    assert once["update/reviewer/trained_samples"] > 0 and once["reviewer/clip_frac"] == 0.0  # one pass: ratio 1
    # the learner's log-probs are the sampler's (the merged generation copy against the PEFT forward, fp32)
    assert once["rollout/logprob_gap_tokens"] > 0 and once["rollout/logprob_gap_max"] < 1e-4
    # what RL practitioners look at first, per role
    assert once["reviewer/lr"] == pytest.approx(1e-2) and once["reviewer/grad_norm"] > 0 and once["reviewer/entropy"] > 0
    assert once["solver/response_length_max"] >= once["solver/response_length_mean"] > 0
    assert 0.0 <= once["reviewer/truncation_rate"] <= 1.0
    twice = run(small_cfg(*over, "reward.ppo_epochs=2"))
    assert twice["update/reviewer/trained_samples"] > 0 and twice["reviewer/clip_frac"] > 0.0


def test_adapters_and_their_optimizer_state_stay_fp32_under_bf16_compute(small_cfg, tmp_path):
    from safetensors.torch import load_file

    cfg = small_cfg("trainer.max_steps=1", "hardware.precision=bf16-mixed", "model.dtype=bfloat16", "reward=sft",
                    "trainer.constructor=rule", "trainer.reviews=false", "trainer.eval_at_end=false",
                    "trainer.checkpoint_every=1", f"paths.output_dir={tmp_path}/out")
    final = run(cfg)
    assert final["update/solver/trained_samples"] > 0
    files = list((tmp_path / "out" / "policy").glob("**/adapter_model.safetensors"))
    assert files and all(t.dtype == torch.float32 for f in files for t in load_file(str(f)).values())
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    states = [s for opt in ckpt["optimizer_states"] for s in opt["state"].values()]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)
    with pytest.raises(ValueError, match="bf16-mixed"):
        run(small_cfg("hardware.precision=bf16-true"))
    with pytest.raises(ValueError, match="model.finetune=full"):
        run(small_cfg("model.finetune=full", "model.dtype=bfloat16"))
