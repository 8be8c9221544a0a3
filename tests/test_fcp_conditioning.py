"""scripts/fcp_conditioning.py --nll: the log-loss FCP's likelihood update puts on the model's own right and wrong
samples, each under the prompt FCP trains it with."""

from __future__ import annotations

import random
import sys

import pytest
import torch

from conftest import REPO, WARM120


def test_own_sample_loss_is_the_models_log_loss_under_the_feedback_each_sample_earned(small_cfg):
    sys.path.insert(0, str(REPO / "scripts"))
    from fcp_conditioning import own_sample_loss

    from alive_exp import domains
    from alive_exp.rewards import fcp_feedback, positive_feedback
    from alive_exp.train import build
    from alive_exp.warmstart import trained_options

    cfg = small_cfg(*WARM120)
    module = build(cfg, evaluate=False)
    module.use_adapter("solver")
    domain = domains.get(cfg.benchmark.domain, **trained_options(cfg))
    task = domain.heldout_tasks(1, 0)[0]
    good = domain.solution_text(task)
    bad = domain.corrupt(task, good, random.Random(0))
    templates = module.step_impl.templates
    scores = own_sample_loss(module, domain, templates, [task, task], [good, bad], [True, False])

    def loss(feedback: str, text: str) -> tuple[float, int]:  # by hand: one forward pass, the completion's tokens
        gen = module.generator
        p = gen.encode_prompt(templates.render("fcp_solver", task=task.prompt, critique=feedback))
        c = gen.encode_completion(text)
        with torch.no_grad():
            logits = module.model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].float()
        return -logits.log_softmax(-1).gather(1, torch.tensor(c)[:, None]).sum().item(), len(c)

    right, n_right = loss(positive_feedback(domain, task), good)
    wrong, n_wrong = loss(fcp_feedback(domain.critique(task, bad).text, task.reference), bad)
    assert scores["nll_per_token_right"] == pytest.approx(right / n_right, abs=1e-3)
    assert scores["nll_per_token_wrong"] == pytest.approx(wrong / n_wrong, abs=1e-3)
    assert scores["wrong_share_of_loss"] == pytest.approx(wrong / (right + wrong), abs=2e-3)
