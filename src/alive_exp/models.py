"""The policy: a Hugging Face causal LM (the tiny local one or a hub model) with one LoRA adapter per role.

`model=tiny` trains a byte-level BPE tokenizer on the domain corpus and builds a small Qwen2-architecture
model once, caches both under `<data_dir>/models/`, and loads them back with `from_pretrained` like any
hub model. Real models load by hub id or local path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from alive_exp import domains
from alive_exp.roles import ROLES

log = logging.getLogger(__name__)

SPECIAL = {"pad": "<|pad|>", "bos": "<|endoftext|>", "eos": "<|im_end|>", "start": "<|im_start|>"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHARED_ADAPTER = "policy"


def _tiny_key(cfg: DictConfig, corpus_domains: list[str]) -> str:
    spec = {"tiny": OmegaConf.to_container(cfg.tiny, resolve=True), "domains": sorted(corpus_domains), "v": 4}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def tokenizer_corpus(corpus_domains: list[str], size: int, seed: int) -> list[str]:
    """Text the tiny tokenizer learns from: each domain's training documents plus the role vocabulary."""
    texts: list[str] = []
    for name in corpus_domains:
        texts += [d.text for d in domains.get(name).documents("train", size, seed)]
        texts += domains.get(name).vocabulary()
    texts += [
        "Task: Span: Verdict: correct incorrect Critique: Step is wrong not right Answer: Revise the solution "
        "Document: Feedback: Solve the task. Review the solution against the reference. [MASK]"
    ] * 50
    return texts


def build_tiny(cfg: DictConfig, data_dir: str | Path, corpus_domains: list[str]) -> Path:
    """Build (once) and cache the tiny tokenizer and randomly initialised model; return their folder."""
    path = Path(data_dir) / "models" / f"tiny-{_tiny_key(cfg, corpus_domains)}"
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    t = cfg.tiny
    log.info("building tiny model and tokenizer at %s", path)
    tok = Tokenizer(models.BPE())
    # every digit its own token: arithmetic stays learnable for a small model
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(t.vocab_size), special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(corpus_domains, int(t.corpus_docs), int(t.seed)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIAL["pad"], bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
        additional_special_tokens=[SPECIAL["start"]],
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(int(t.seed))
    config = Qwen2Config(
        vocab_size=len(fast), hidden_size=int(t.hidden_size), intermediate_size=int(t.intermediate_size),
        num_hidden_layers=int(t.num_layers), num_attention_heads=int(t.num_heads),
        num_key_value_heads=int(t.num_kv_heads), max_position_embeddings=int(t.max_position_embeddings),
        tie_word_embeddings=True, pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fast.save_pretrained(tmp)
    model.save_pretrained(tmp)
    try:
        tmp.rename(path)  # atomic: a half-built model is never picked up
    except OSError:
        if not (path / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # a parallel job built it first
    return path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def policy_adapters(path: str | Path) -> dict[str, Path]:
    """A trained policy folder (`<run>/policy` of a LoRA run): adapter name -> its folder. Empty for a full
    model folder (a full fine-tune's policy, a warm start), which holds the model's own config.json."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").exists():
        return {}
    return {sub.name: sub for sub in sorted(p.iterdir()) if (sub / "adapter_config.json").exists()}


def policy_base(path: str | Path) -> str:
    """The base model a policy folder's adapters were trained on (recorded by PEFT in adapter_config.json)."""
    adapters = policy_adapters(path)
    base = json.loads((next(iter(adapters.values())) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base or (Path(base).is_absolute() and not Path(base).exists()):  # (a relative name: a hub id)
        raise RuntimeError(f"{path}: its adapters were trained on {base!r}, which is not here; rebuild it (the same "
                           "warm start or tiny model config) or copy it back")
    return base


def load_policy_adapters(model: Any, path: str | Path, cfg: DictConfig) -> None:
    """Load every role's trained adapter from a policy folder into `model` (built by `attach_adapters` with
    the same LoRA config); refuses a folder whose adapters or LoRA shape do not fit the config."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = policy_adapters(path)
    wanted = adapter_names(cfg)
    if sorted(found) != sorted(wanted):
        raise ValueError(f"model.init_from={path} holds adapters {sorted(found)}, but model.adapters={cfg.adapters} "
                         f"needs {sorted(wanted)}")
    for name in wanted:
        saved = json.loads((found[name] / "adapter_config.json").read_text())
        for key, ours in (("r", int(cfg.lora.r)), ("lora_alpha", int(cfg.lora.alpha))):
            if saved.get(key) != ours:
                raise ValueError(f"model.init_from={path}: adapter {name!r} has {key}={saved.get(key)}, the config "
                                 f"model.lora has {ours}")
        if sorted(saved.get("target_modules") or []) != sorted(cfg.lora.target_modules):
            raise ValueError(f"model.init_from={path}: adapter {name!r} targets {sorted(saved['target_modules'])}, "
                             f"model.lora.target_modules is {sorted(cfg.lora.target_modules)}")
        result = set_peft_model_state_dict(model, load_file(str(found[name] / "adapter_model.safetensors")),
                                           adapter_name=name)
        missing = [k for k in result.missing_keys if ".lora_" in k and f".{name}." in k]
        if missing:
            raise ValueError(f"model.init_from={path}: adapter {name!r} lacks weights such as {missing[:2]}")


def load_base(cfg: DictConfig, data_dir: str | Path, corpus_domains: list[str]) -> tuple[Any, Any, str]:
    """(model, tokenizer, path) for `cfg.model`; a clear error when a hub model cannot be had offline. With
    `init_from` a policy folder, the base its adapters were trained on (`load_policy_adapters` adds them)."""
    from transformers import AutoModelForCausalLM

    if cfg.init_from and policy_adapters(cfg.init_from):
        path = policy_base(cfg.init_from)
    elif cfg.init_from:
        path = str(cfg.init_from)
    elif cfg.source == "tiny":
        path = str(build_tiny(cfg, data_dir, corpus_domains))
    else:
        path = str(cfg.pretrained)
    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    try:
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    except OSError as exc:
        raise RuntimeError(
            f"could not load model {path!r} ({exc.__class__.__name__}). Offline with no cached weights, "
            "a hub model cannot be downloaded: run once with hub access, point model.pretrained at a local "
            "folder, or use model=tiny."
        ) from exc
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, path


def adapter_names(cfg: DictConfig) -> list[str]:
    """Adapter per role, one shared adapter, or none (full fine-tune)."""
    if cfg.finetune == "full":
        return []
    return list(ROLES) if cfg.adapters == "per_role" else [SHARED_ADAPTER]


def attach_adapters(model: Any, cfg: DictConfig) -> Any:
    """Wrap the base model with PEFT LoRA adapters (per role or shared); full fine-tune returns it as is."""
    names = adapter_names(cfg)
    if not names:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=int(cfg.lora.r), lora_alpha=int(cfg.lora.alpha), lora_dropout=float(cfg.lora.dropout),
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype: adapters are fp32 whatever the base's dtype (bf16 for hub models), since an update at
    # lr 5e-5 vanishes in bf16 and AdamW's state follows its parameter's dtype (tests/test_train.py checks both)
    model = get_peft_model(model, lora, adapter_name=names[0], autocast_adapter_dtype=True)
    for name in names[1:]:
        model.add_adapter(name, lora, autocast_adapter_dtype=True)
    return model


def role_adapter(cfg: DictConfig, role: str) -> str | None:
    names = adapter_names(cfg)
    if not names:
        return None
    return role if cfg.adapters == "per_role" else SHARED_ADAPTER


def adapter_parameters(model: Any, adapter: str | None) -> list[torch.nn.Parameter]:
    """The parameters one optimizer owns: those of one adapter, or all (full fine-tune)."""
    if adapter is None:
        return [p for p in model.parameters()]
    params = [p for n, p in model.named_parameters() if f".{adapter}." in n]
    if not params:
        raise RuntimeError(f"adapter {adapter!r} has no parameters; check model.lora.target_modules")
    return params


class MergedView:
    """A plain copy of the base model with one adapter merged in, for fast generation.

    Unmerged LoRA roughly halves decoding speed (shared/gpu/README.md: 1,685 vs 3,463 tok/s); merging
    the active role's adapter into a plain copy restores base-model speed and lets a static KV cache
    compile once. The copy is re-merged lazily, only after that adapter's optimizer has stepped.
    """

    def __init__(self, peft_model: Any, plain: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.peft, self.plain = peft_model, plain
        inner = peft_model.get_base_model()
        self.pairs = [(mod, plain.get_submodule(name)) for name, mod in inner.named_modules()
                      if isinstance(mod, LoraLayer) and hasattr(mod, "base_layer")]
        self.merged: str | None = None
        self.plain.eval().requires_grad_(False)

    def stale(self, adapter: str | None = None) -> None:
        """Mark an adapter's weights as changed (call after its optimizer stepped)."""
        if adapter is None or adapter == self.merged:
            self.merged = None

    @torch.no_grad()
    def model(self) -> Any:
        device = next(self.peft.parameters()).device
        if next(self.plain.parameters()).device != device:  # follows the policy when Lightning moves it to a GPU
            self.plain.to(device)
            self.merged = None
        adapter = self.peft.active_adapter
        if self.merged != adapter:
            for lora, target in self.pairs:
                target.weight.copy_(lora.base_layer.weight + lora.get_delta_weight(adapter).to(target.weight.dtype))
            self.merged = adapter
        return self.plain
