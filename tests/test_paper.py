"""The paper's setup (`+experiment=paper`): a raw corpus through `datasets`, loaded here from a local file of
Big-Math's schema, since tests have no hub."""

from __future__ import annotations

import json

import pytest

from alive_exp import domains
from conftest import compose_cfg

ROWS = [{"problem": f"What is {a} plus {b}?", "answer": str(a + b), "source": "synthetic", "domain": ["Arithmetic"],
         "llama8b_solve_rate": 0.5} for a in range(40) for b in range(10)]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "big_math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return str(path)


def _math(corpus, **extra):
    return domains.get("math", sources=["hub_corpus"], hide="answer",
                       source_options={"hub_corpus": {"path": "json", "data_files": corpus, "heldout_share": 0.1, **extra}})


def test_a_corpus_becomes_documents_by_its_template_with_a_fixed_held_out_split(corpus):
    math = _math(corpus)
    train, test = math.documents("train", 300, 0), math.documents("test", 20, 0)
    assert len(train) == 300 and 10 <= len(test) <= 20
    assert train[0].text.startswith("Question: What is ") and "\nAnswer: " in train[0].text
    first = lambda docs: {d.text.splitlines()[0] for d in docs}  # noqa: E731
    assert not first(train) & first(test) and not first(math.documents("train", 300, 5)) & first(test)
    assert [d.text for d in math.documents("test", 20, 7)] == [d.text for d in test]  # the same for every seed
    assert [d.text for d in math.documents("train", 300, 5)] != [d.text for d in train]  # seeded order
    task = math.make_task(train[0], *math.candidate_spans(train[0])[-1])
    assert task.reference == train[0].text.rsplit("Answer: ", 1)[1]
    with pytest.raises(ValueError, match="names column 'question'"):
        _math(corpus, template="Question: {question}\nAnswer: {answer}").documents("train", 5, 0)
    with pytest.raises(ValueError, match="needs path"):
        domains.get("math", sources=["hub_corpus"]).documents("train", 5, 0)


def test_the_paper_experiment_is_the_reported_setup(tmp_path):
    cfg = compose_cfg(["+experiment=paper"], tmp_path)
    assert (cfg.model.pretrained, cfg.model.chat, cfg.trainer.spans_per_doc, cfg.trainer.solutions_per_task,
            cfg.trainer.warmup_steps, cfg.oracle.kind, cfg.reward.mode) == ("Qwen/Qwen2.5-7B", False, 8, 16, 256, "http",
                                                                            "verbal")
    assert cfg.benchmark.options.source_options.hub_corpus.path == "SynthLabsAI/Big-Math-RL-Verified"
    assert "Answer:" in cfg.roles.solver and "Verdict: correct" in cfg.roles.reviewer


def test_a_step_trains_on_the_corpus(corpus, small_cfg):
    from alive_exp.train import run

    final = run(small_cfg("benchmark.options.sources=[hub_corpus]", "+benchmark.options.source_options.hub_corpus.path=json",
                          f"+benchmark.options.source_options.hub_corpus.data_files={corpus}", "trainer.max_steps=1",
                          "benchmark.eval_suites=[math_heldout]", "trainer.checkpoint_every=0"))
    assert final["train/tasks"] > 0 and final["tokens/solver"] > 0 and "eval/math_heldout/accuracy" in final
