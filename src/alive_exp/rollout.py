"""Generation for every role: chat formatting, batched sampling, seeded per phase, tokens counted.

Generation dominates the cost of RL for LLMs, so the numbers that matter are visible: every call
returns its completions with their token ids and the count of generated tokens.

On-policy by construction: the sampler draws from softmax(logits / temperature) and nothing else. The
model's own generation config (a hub model may ship a repetition penalty, top_k, top_p) is swapped for a
neutral one during every call, temperature is applied by our own logits processor, and that processor also
records the log-probability of each sampled token under the distribution it was drawn from, which the
learner compares with its own (`rollout/logprob_gap`). Completions end in the chat template's end-of-turn
token (Qwen's `<|im_end|>`, Llama's `<|eot_id|>`), the token the sampler stops on and every likelihood
target ends in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

# a fixed date for chat templates that print today's (Llama 3's): prompts must not change from day to day
TEMPLATE_DATE = "26 Jul 2024"


@dataclass
class Completion:
    """One sampled completion with the ids the learner needs to score it again."""

    prompt: str
    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool
    # log p of each completion token under the distribution the sampler drew it from (None when greedy)
    sampler_logps: list[float] | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.completion_ids)


def phase_seed(seed: int, step: int, phase: str) -> int:
    """A seed per (run seed, step, phase): phases draw from separate streams, so modes share data."""
    return (seed * 1_000_003 + step * 9_176 + sum(ord(c) * 31**i for i, c in enumerate(phase))) % (2**31 - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Sample with `seed` without disturbing the global RNG streams (dropout, data order)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Sampling(LogitsProcessor):
    """Divides the logits by the temperature (the only change to them) and records, for every row, the
    log-probability of the token then sampled: at each call the previous step's token is the last input id."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        # the last step's scores and their logsumexp: log p(chosen) = score[chosen] - logsumexp, without
        # writing out the whole log-softmax every step
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.logps: list[torch.Tensor] = []  # per generated position: [batch] log-probs of the chosen tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.record(input_ids[:, -1])
        if self.temperature != 1.0:
            scores = scores / self.temperature
        z = scores.float()
        self.previous = (z, torch.logsumexp(z, dim=-1))
        return scores

    def record(self, chosen: torch.Tensor) -> None:
        if self.previous is not None:
            z, lse = self.previous
            self.logps.append(z.gather(1, chosen.unsqueeze(1)).squeeze(1) - lse)
            self.previous = None


@contextlib.contextmanager
def neutral_generation_config(model) -> Iterator[None]:
    """The model's generation config swapped for a neutral one (ids kept) for the duration: generate() fills
    every knob a call leaves unset from the model's config, so a hub model's repetition penalty or top_k would
    otherwise shape rollouts the learner then scores without them."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id,
                                                pad_token_id=saved.pad_token_id)
    try:
        yield
    finally:
        target.generation_config = saved


class Generator:
    """Wraps `model.generate` for chat prompts; one instance serves every role and evaluation."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, static_cache: bool = False,
                 synced_gpus: bool = False, merged=None, chat: bool = True) -> None:
        self.model = model
        self.chat_prompts = chat  # false: plain-text prompts (base models), whatever the tokenizer ships
        self.merged = merged  # models.MergedView: generate with the active adapter merged into a plain copy
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.static_cache = static_cache
        self.synced_gpus = synced_gpus
        self.turn_end = self._turn_end()
        self.eos_ids = self._eos_ids()
        self._prompt_ids: dict[str, list[int]] = {}  # prompts seen this step: encoded once, reused by the learner

    def close(self) -> None:
        """Release what the engine holds (a served engine stops its server; in-process generation: nothing)."""

    def pop_metrics(self) -> dict[str, float]:
        """The engine's own metrics since the last call (a served engine: its weight syncs); none here."""
        return {}

    @property
    def use_chat(self) -> bool:
        return self.chat_prompts and bool(getattr(self.tokenizer, "chat_template", None))

    def _turn_end(self) -> int:
        """The token an assistant turn ends with in the chat template, found by rendering one; a tokenizer
        without a template (a base model) ends completions with its EOS."""
        tok = self.tokenizer
        if self.use_chat:
            text = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK"}],
                                           tokenize=False, date_string=TEMPLATE_DATE)
            rest = tok(text[text.rindex("OK") + 2:], add_special_tokens=False)["input_ids"]
            special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
            if rest and rest[0] in special:
                return rest[0]
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-turn in its chat template and no EOS token: completions "
                             "could not end")
        return tok.eos_token_id

    def _eos_ids(self) -> list[int]:
        """What the sampler stops on: the end of turn first, and any EOS of the tokenizer or generation config."""
        ids = {self.tokenizer.eos_token_id}
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(eos) if isinstance(eos, list) else {eos}
        return [self.turn_end] + sorted(i for i in ids if i is not None and i != self.turn_end)

    def chat(self, prompt: str) -> str:
        """The model input: the chat template with a generation prompt, or the prompt itself for a tokenizer
        without one (a base model)."""
        if not self.use_chat:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, date_string=TEMPLATE_DATE
        )

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a chat-formatted prompt, memoised: rollout encodes a prompt once for N samples, and the
        learner's likelihood targets (distillation, FCP, oracle critiques) reuse the same prompts. A rendered
        chat template already carries any BOS the model expects; a raw prompt gets the tokenizer's own."""
        ids = self._prompt_ids.get(prompt)
        if ids is None:
            if len(self._prompt_ids) >= 16_384:  # bounded: prompts are mostly new every step
                self._prompt_ids.clear()
            ids = self._prompt_ids[prompt] = self.tokenizer(self.chat(prompt),
                                                            add_special_tokens=not self.use_chat)["input_ids"]
        return list(ids)

    def encode_completion(self, text: str) -> list[int]:
        """Token ids of a target completion (for likelihood targets), ending in the end of turn the sampler
        stops on."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.turn_end]

    def written(self, prompt: str, text: str, max_new_tokens: int | None = None) -> Completion:
        """A completion someone else wrote (the oracle's critique), as the sampler would have returned it; with
        `max_new_tokens`, held to the budget a sampled one has: cut there, as `generate` would have cut it."""
        ids = self.encode_completion(text)
        truncated = max_new_tokens is not None and len(ids) > max_new_tokens
        if truncated:
            ids = ids[:max_new_tokens]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(prompt, text, self.encode_prompt(prompt), ids, truncated)

    def token_at(self, completion_ids: list[int], offset: int) -> int:
        """Index of the completion token that holds character `offset` of its decoded text (the first token
        whose text reaches past it); len(completion_ids) when the text ends before `offset`."""
        for k in range(1, len(completion_ids) + 1):
            if len(self.tokenizer.decode(completion_ids[:k], skip_special_tokens=True)) > offset:
                return k - 1
        return len(completion_ids)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """n completions for each prompt (greedy when temperature == 0), grouped per prompt.

        `on_batch(k)` is called after each batch of k completions (progress bars)."""
        if not prompts:
            return []
        flat = [p for p in prompts for _ in range(n)]
        out: list[Completion] = []
        ctx = seeded(seed) if seed is not None else contextlib.nullcontext()
        model = self.merged.model() if self.merged is not None else self.model
        was_training = model.training
        model.eval()
        try:
            with ctx:
                for i in range(0, len(flat), self.batch_size):
                    out += self._generate_batch(model, flat[i:i + self.batch_size], max_new_tokens, temperature, top_p)
                    if on_batch is not None:
                        on_batch(len(flat[i:i + self.batch_size]))
        finally:
            model.train(was_training)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, model, prompts: list[str], max_new_tokens: int, temperature: float,
                        top_p: float) -> list[Completion]:
        ids = [self.encode_prompt(p) for p in prompts]  # n samples of one prompt share one encoding
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        device = next(model.parameters()).device
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=self.eos_ids,
                      do_sample=temperature > 0)
        sampling = None
        if temperature > 0:
            if top_p < 1.0:  # nucleus sampling changes the distribution the learner would have to score
                raise ValueError("top_p < 1 samples from a distribution the learner does not score; use top_p=1")
            sampling = _Sampling(temperature)
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList([sampling]))
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        if self.synced_gpus:
            kwargs["synced_gpus"] = True
        with neutral_generation_config(model):
            seqs = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        new = seqs[:, width:]
        logps = None
        if sampling is not None:
            if new.size(1):
                sampling.record(new[:, -1])
            logps = torch.stack(sampling.logps, 1).tolist() if sampling.logps else [[] for _ in prompts]
        result = []
        for i, (prompt, p_ids, toks) in enumerate(zip(prompts, ids, new.tolist())):
            cut = next((j for j, t in enumerate(toks) if t in self.eos_ids), None)
            kept = toks[: cut + 1] if cut is not None else [t for t in toks if t != pad]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            result.append(Completion(prompt, text, p_ids, kept, truncated=cut is None,
                                     sampler_logps=logps[i][:len(kept)] if logps is not None else None))
        return result
