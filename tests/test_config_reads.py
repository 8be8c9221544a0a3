"""Every config leaf is read: a key that no code reads is a silent knob (setting it changes nothing).

A smoke run of `+experiment=math` (a short warm start, two verbal ALIVE steps, profiling, checkpoints,
evaluation) records every leaf the code reads by attribute, item or `get` access, or by converting the
subtree that holds it (`OmegaConf.to_container`, e.g. the role templates); reads made only to hash or log
the whole config (run fingerprint, MLflow params, cache keys, config.yaml) do not count. Leaves the smoke
cannot reach are listed in CONDITIONAL with the condition that reads them, and each of those must still be
read somewhere in src/ by name.
"""

from __future__ import annotations

import inspect
import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from conftest import REPO, WARM120

# leaf -> when it is read (the smoke run cannot reach it)
CONDITIONAL = {
    "model.pretrained": "model.source=hub",
    **{f"oracle.{k}": "oracle.kind=hf or http" for k in
       ("api_key_env", "base_url", "max_new_tokens", "max_retries", "model", "temperature", "timeout_s")},
    **{f"rollout.vllm.{k}": "rollout=vllm" for k in
       ("url", "python", "max_lora_rank", "max_model_len", "concurrency", "startup_timeout_s", "request_timeout_s",
        "extra_args", "env")},
    "task_name": "the run folder's name (hydra.run.dir interpolates it)",
    "reward.distill_coef": "a step with a verbal distillation target (a revision the reference confirms)",
    "reward.fcp_coef": "a step with a distillation target",
    "reward.sft_coef": "a step with a distillation target",
    "reward.reviewer_instructive": "a review whose verdict parses, with a revision that fixed a wrong solution",
    "reward.reviewer_agreement": "a review whose verdict parses",
    "warmstart.own_samples_every": "a warm-start step at or past warmstart.own_samples_from (100 in +experiment=math)",
    "warmstart.own_samples_pool": "a warm-start step at or past warmstart.own_samples_from",
    "warmstart.role_mix": "a warm-start check where the solver's floors held",
    **{f"warmstart.role_mix.{k}": "a warm-start check where the solver's floors held" for k in
       ("constructor", "solver", "reviewer", "reviewer_blind", "refiner", "fcp_solver")},
    "trainer.span_min_chars": "a constructor proposal whose span parses",
    "trainer.span_max_chars": "a constructor proposal whose span parses",
    **{f"trainer.optim.{r}.grad_clip": f"a step where the {r} has a sample with a non-zero loss"
       for r in ("constructor", "solver", "reviewer")},
}
# functions whose reads of the whole config only hash or record it
HASHERS = {"config_fingerprint", "flatten", "warmstart_dir", "tiny_dir"}


class Reads:
    """Patches DictConfig reads and OmegaConf.to_container/to_yaml for the duration of a `with`."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.quiet = 0

    def __enter__(self):
        self._get, self._tc, self._yaml = DictConfig._get_impl, OmegaConf.to_container, OmegaConf.to_yaml
        reads = self

        def get_impl(node, key, default_value, validate_key=True):
            if not reads.quiet:
                try:
                    reads.keys.add(node._get_full_key(key))
                except Exception:  # a key that cannot be named (a missing one): the read itself raises
                    pass
            return reads._get(node, key, default_value, validate_key)

        def to_container(cfg, *args, **kwargs):
            if not reads.quiet and isinstance(cfg, (DictConfig, ListConfig)) \
                    and inspect.stack()[1].function not in HASHERS:
                reads.keys |= leaves(cfg, cfg._get_full_key(None) if cfg._get_parent() is not None else "")
            reads.quiet += 1
            try:
                return reads._tc(cfg, *args, **kwargs)
            finally:
                reads.quiet -= 1

        def to_yaml(*args, **kwargs):
            reads.quiet += 1
            try:
                return reads._yaml(*args, **kwargs)
            finally:
                reads.quiet -= 1

        DictConfig._get_impl, OmegaConf.to_container, OmegaConf.to_yaml = get_impl, to_container, to_yaml
        return self

    def __exit__(self, *exc) -> None:
        DictConfig._get_impl, OmegaConf.to_container, OmegaConf.to_yaml = self._get, self._tc, self._yaml


def leaves(node, prefix: str = "") -> set[str]:
    if isinstance(node, DictConfig):
        out: set[str] = set()
        for k in node.keys():
            out |= leaves(node._get_node(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix}


def interpolated(cfg: DictConfig) -> set[str]:
    """Leaves another value interpolates (`${paths.root_dir}/data` reads paths.root_dir)."""
    text = OmegaConf.to_yaml(cfg)  # unresolved
    return set(re.findall(r"\$\{([a-z_.]+)\}", text))


def test_every_config_leaf_is_read_by_a_smoke_run(small_cfg):
    from alive_exp.train import run

    cfg = small_cfg(*WARM120, "trainer.max_steps=2", "reward=verbal", "trainer.checkpoint_every=1",
                    "trainer.profile=true", "trainer.profile_steps=1", "trainer.eval_every=2")
    all_leaves = leaves(cfg)
    with Reads() as reads:
        run(cfg)
    unread = all_leaves - reads.keys - interpolated(cfg)
    assert not unread - set(CONDITIONAL), f"config leaves no code read (silent knobs): {sorted(unread - set(CONDITIONAL))}"
    # a conditional leaf is still read by name somewhere in the package
    source = "\n".join(p.read_text() for p in [*(REPO / "src" / "alive_exp").rglob("*.py"),
                                                  *(REPO / "conf" / "hydra").glob("*.yaml")])
    for leaf in CONDITIONAL:
        name = leaf.rsplit(".", 1)[-1]
        assert re.search(rf"\.{name}\b|\"{name}\"|\$\{{{leaf}\}}", source), f"{leaf} is read nowhere"
