"""A trained policy comes back: `model.init_from=<run>/policy` continues from its adapters, `alive-exp sample`
prints what each role writes, `alive-exp evaluate` takes the folder."""

from __future__ import annotations

import pytest

from alive_exp import cli
from alive_exp.train import build, run
from conftest import WARM120

PROMPTS = {"solver": [f"Question: {a} + {b}" for a, b in ((12, 34), (56, 7), (81, 19), (340, 66), (25, 25),
                                                            (99, 1), (407, 38), (63, 58))]}
PROMPTS["constructor"] = [f"{t}\n{t.split(': ')[1]} = ?\nAnswer: 1" for t in PROMPTS["solver"]]


def greedy(module, role, texts, **fields):
    module.use_adapter(role)
    key = {"solver": "task", "constructor": "document"}[role]
    prompts = [module.step_impl.templates.render(role, **{key: t}) for t in texts]
    budget = module.cfg.trainer.generation[f"{role}_tokens"]
    return [c[0].text for c in module.generator.generate(prompts, n=1, max_new_tokens=budget, temperature=0.0)]


def test_a_policy_folder_continues_samples_and_evaluates_as_trained(small_cfg, tmp_path, capsys):
    cfg = small_cfg(*WARM120, "trainer.max_steps=2", "reward=sft", "trainer.optim.solver.lr=1e-2",
                    "trainer.optim.constructor.lr=1e-2", "trainer.eval_at_end=false", f"paths.output_dir={tmp_path}/run")
    run(cfg)
    policy = tmp_path / "run" / "policy"
    assert sorted(p.name for p in policy.iterdir() if p.is_dir()) == ["constructor", "reviewer", "solver"]
    warm = build(small_cfg(*WARM120, "trainer.max_steps=2", "reward=sft"), evaluate=False)
    cont = build(small_cfg(*WARM120, "reward=sft", f"model.init_from={policy}"), evaluate=False)
    for role in ("solver", "constructor"):
        before_update = greedy(cont, role, PROMPTS[role])
        assert before_update == cli.sample_policy(policy, role, PROMPTS[role])
        if role == "solver":  # a step at lr 1e-2 on the references moved the solver
            assert before_update != greedy(warm, role, PROMPTS[role])
    assert cli.main(["sample", str(policy), "Question: 12 + 34"]) == 0 and "--- solver on" in capsys.readouterr().out
    # the reviewer with the reference, the blind reviewer (no --reference) and the refiner, each with its own prompt
    task, solution, critique = "Question: 12 + 34", "2+4=6\n1+3=4\nAnswer: 46", "Tens column: wrong digits."
    g = cont.cfg.trainer.generation
    for template, adapter, fields, budget in (
            ("reviewer", "reviewer", {"reference": "46", "solution": solution}, g.reviewer_tokens),
            ("reviewer_blind", "reviewer", {"solution": solution}, g.reviewer_tokens),
            ("refiner", "solver", {"solution": solution, "critique": critique}, g.solver_tokens)):
        cont.use_adapter(adapter)
        prompt = cont.step_impl.templates.render(template, task=task, **fields)
        expected = cont.generator.generate([prompt], n=1, max_new_tokens=budget, temperature=0.0)[0][0].text
        role = "refiner" if template == "refiner" else "reviewer"
        assert cli.sample_policy(policy, role, [task], **fields) == [expected], template
    scores, meta = cli.evaluate_checkpoint(policy, ["benchmark.eval_size=2", "benchmark.self_correction=false"])
    assert meta["checkpoint"] == str(policy) and any(k.endswith("/accuracy") for k in scores)
    with pytest.raises(ValueError, match="lora has 8"):
        build(small_cfg(*WARM120, f"model.init_from={policy}", "model.lora.r=8"), evaluate=False)


def test_a_warm_start_folder_samples_as_the_run_it_starts(small_cfg):
    """`alive-exp sample data/warmstart/<key> --role reviewer ...`: what every role writes before RL, read from the
    folder alone (its config is saved beside the weights), the same as a run starting from it writes."""
    from alive_exp.warmstart import POLICY_CONFIG, build_warmstart

    cfg = small_cfg(*WARM120, "reward=sft")
    folder = build_warmstart(cfg, progress=False)
    assert (folder / POLICY_CONFIG).exists()
    start = build(cfg, evaluate=False)
    assert cli.sample_policy(folder, "solver", PROMPTS["solver"]) == greedy(start, "solver", PROMPTS["solver"])
    task, fields = "Question: 12 + 34", {"reference": "46", "solution": "2+4=6\n1+3=4\nAnswer: 46"}
    start.use_adapter("reviewer")
    prompt = start.step_impl.templates.render("reviewer", task=task, **fields)
    expected = start.generator.generate([prompt], n=1, max_new_tokens=cfg.trainer.generation.reviewer_tokens,
                                        temperature=0.0)[0][0].text
    assert cli.sample_policy(folder, "reviewer", [task], **fields) == [expected]
