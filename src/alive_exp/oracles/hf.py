"""A local Hugging Face causal LM as the critic, for warm-up without a server or an API.

The model loads lazily so that building the oracle from config costs nothing until critiques are
needed; call `load()` at startup to surface a bad path early. A failed load is a configuration
error and raises; a failed generation is a runtime hiccup and comes back as error Critiques.
"""

from __future__ import annotations

import logging
from typing import Any

from alive_exp.domains.base import Critique
from alive_exp.oracles import CritiqueRequest
from alive_exp.roles import parse_critique

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class HFOracle:
    """Greedy (or sampled) critiques from `AutoModelForCausalLM`, batched with left padding."""

    name = "hf"

    def __init__(
        self,
        model_name_or_path: str,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 256,
        batch_size: int = 8,
        temperature: float = 0.0,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1 or temperature < 0:
            raise ValueError("HFOracle needs batch_size >= 1, max_new_tokens >= 1 and temperature >= 0")
        self.model_name_or_path = model_name_or_path
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.tokenizer: Any = None
        self.model: Any = None
        self._gen: Any = None  # rollout.Generator over the loaded model

    def __repr__(self) -> str:
        return f"HFOracle(model={self.model_name_or_path!r}, device={self.device!r})"

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load tokenizer and model once; raises RuntimeError naming the model when that fails."""
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype: Any = "auto"
        if self.dtype != "auto":
            key = _DTYPES.get(str(self.dtype).lower())
            if key is None:
                raise ValueError(f"HFOracle dtype {self.dtype!r} not one of auto, {', '.join(_DTYPES)}")
            dtype = getattr(torch, key)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_name_or_path, dtype=dtype)
            model.to(self.device)
        except Exception as e:  # noqa: BLE001 - any load failure is the same config error to the user
            raise RuntimeError(
                f"HFOracle could not load model {self.model_name_or_path!r} on {self.device!r} "
                f"({type(e).__name__}: {e}). Check the path or that the weights are in the local HF "
                f"cache (runs are offline), or use the rule-based critic with oracle=rule."
            ) from e
        # decoder-only batches must be left-padded so every row's new tokens start at one column
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise RuntimeError(
                    f"HFOracle: tokenizer of {self.model_name_or_path!r} has neither a pad nor an eos "
                    "token, so batches cannot be padded; use oracle=rule or a model with one."
                )
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        self.tokenizer, self.model = tokenizer, model

    # -- critiques ----------------------------------------------------------------------------
    def render(self, prompt: str) -> str:
        """The model input: the chat template with a generation prompt when there is one, else the prompt."""
        return self._generator().chat(prompt)

    def _generator(self):
        from alive_exp.rollout import Generator

        if self._gen is None:
            self._gen = Generator(self.model, self.tokenizer, batch_size=self.batch_size)
        return self._gen

    def critique(self, requests: list[CritiqueRequest]) -> list[Critique]:
        """One Critique per request, in order; generation failures become error Critiques."""
        if not requests:
            return []
        self.load()
        out: list[Critique] = []
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i : i + self.batch_size]
            try:
                texts = self._generate([r.prompt for r in batch])
            except Exception as e:  # noqa: BLE001 - one bad batch must not end the step
                log.exception("hf oracle %s: generation failed", self.model_name_or_path)
                reason = f"hf oracle: generation failed: {type(e).__name__}: {e}"
                out.extend(Critique(text="", verdict=None, error=reason) for _ in batch)
                continue
            out.extend(parse_critique(t) for t in texts)
        return out

    def _generate(self, prompts: list[str]) -> list[str]:
        """Through the rollout's generator (one generate path for every role and critic): left padding,
        the chat template or the raw prompt, greedy or sampled, new tokens only."""
        groups = self._generator().generate(prompts, n=1, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        return [g[0].text for g in groups]
