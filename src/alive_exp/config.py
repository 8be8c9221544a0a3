"""Structured config schemas: Hydra validates every composed config against these dataclasses.

A misspelled key, a wrong type or a value outside an enumeration fails at start-up with a message naming
the key (e.g. `Key 'lrr' not in 'RoleOptimConfig'`, `Invalid value 'cosin', expected one of [constant, cosine,
linear]`). Enumerations are `StrEnum`s whose member names are their values, so `cfg.model.finetune == "lora"`
reads as before and logged params and saved configs hold the plain strings. Domain options are checked by
each domain (`domains.base.Domain.__init__`). Defaults here mirror `conf/`; `conf/` documents them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

POLICY_CONFIG = "alive_config.yaml"  # the resolved config beside a saved policy or a warm start

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _choices(name: str, values: str) -> type[StrEnum]:
    """An enumeration whose member names are its values (OmegaConf matches a value by member name)."""
    return StrEnum(name, {v: v for v in values.split()})


Source = _choices("Source", "tiny hub")
Dtype = _choices("Dtype", "auto float32 bfloat16 float16")
Finetune = _choices("Finetune", "lora full")
Adapters = _choices("Adapters", "per_role shared")
Schedule = _choices("Schedule", "constant cosine linear")
Constructor = _choices("Constructor", "learned rule")
OracleKind = _choices("OracleKind", "rule hf http")
RolloutEngine = _choices("RolloutEngine", "hf vllm")
CriticWriter = _choices("CriticWriter", "self oracle")
Credit = _choices("Credit", "outcome critique")
LossType = _choices("LossType", "dapo grpo dr_grpo bnpo")  # TRL's names and meanings (losses.LOSS_TYPES)


@dataclass
class TinyConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024
    corpus_docs: int = 4000
    seed: int = 0


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))


@dataclass
class ModelConfig:
    name: str = "tiny"
    source: Source = Source.tiny
    pretrained: Optional[str] = None
    init_from: Optional[str] = None
    dtype: Dtype = Dtype.float32
    attn_implementation: str = "sdpa"
    finetune: Finetune = Finetune.lora
    adapters: Adapters = Adapters.per_role
    chat: bool = True  # render prompts with the tokenizer's chat template (false: plain text, for base models)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class BenchmarkConfig:
    domain: str = "math"
    options: dict[str, Any] = field(default_factory=dict)
    train_docs: int = 2000
    eval_domains: list[str] = field(default_factory=lambda: ["math"])
    eval_suites: list[str] = field(default_factory=list)
    eval_size: int = 100
    pass_k: list[int] = field(default_factory=lambda: [4])
    self_correction: bool = True


@dataclass
class RewardConfig:
    # registries, not enumerations: `rewards.reward_mode` and `losses.advantage` add entries; train.build
    # refuses a name no entry has, naming the registered ones
    mode: str = "scalar"  # scalar | judge | verbal | fcp | sft | any registered mode
    advantage: str = "grpo"  # grpo | rloo | batch | pooled | any registered estimator
    scale_by_std: bool = True
    loss_type: LossType = LossType.dapo
    negative_weight: float = 1.0
    clip_eps: float = 0.2
    ppo_epochs: int = 1  # passes (optimizer steps) over each rollout; > 1 makes clip_eps bind
    kl_coef: float = 0.0
    distill_coef: float = 1.0
    refine: bool = False
    fcp_coef: float = 1.0
    sft_coef: float = 1.0
    reviewer_agreement: float = 1.0
    reviewer_balance: bool = True
    reviewer_instructive: float = 0.5
    constructor_invalid: float = -1.0
    credit: Credit = Credit.outcome  # critique: a rejected solution's tokens before the line its critique names get no negative advantage
    refinements_in_group: bool = False  # Critique-GRPO: revisions join their task's group for the advantage (verbal)
    refinement_shaping: float = 0.1  # gamma of Critique-GRPO's policy shaping p/(p+gamma) on revision tokens; 0: none


@dataclass
class RoleOptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: Schedule = Schedule.constant
    warmup_steps: int = 0
    grad_clip: float = 1.0
    loss_weight: float = 1.0


@dataclass
class OptimConfig:
    constructor: RoleOptimConfig = field(default_factory=RoleOptimConfig)
    solver: RoleOptimConfig = field(default_factory=RoleOptimConfig)
    reviewer: RoleOptimConfig = field(default_factory=RoleOptimConfig)


@dataclass
class GenerationConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    constructor_tokens: int = 16
    solver_tokens: int = 48
    reviewer_tokens: int = 48
    batch_size: int = 64
    eval_temperature: float = 1.0
    merge_adapters: bool = True


@dataclass
class TrainerConfig:
    max_steps: int = 30
    docs_per_step: int = 8
    spans_per_doc: int = 2  # M: constructor proposals per document
    solutions_per_task: int = 4  # N: solver samples per task
    max_tasks_per_step: int = 8
    constructor: Constructor = Constructor.learned
    span_min_chars: int = 1
    span_max_chars: int = 40
    # share of a step's documents on which a uniformly posed task is also solved (metrics only, never trained on):
    # what the learned constructor's choice is worth against uniform posing on the same pages
    uniform_probe_share: float = 0.0
    blind_review_share: float = 0.0
    reviews: bool = True  # false: solver-only steps (no review phase, no reviewer training; scalar and sft)
    warmup_steps: int = 0  # oracle writes critiques for the first warmup_steps
    micro_batch_size: int = 32
    share_prompt_prefix: bool = True  # a group's common prompt prefix is run once in the update, not per sample
    fused_lora: bool = True  # float32 LoRA layers run one fused autograd function in the update (fused_lora.py)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_every: int = 0
    eval_at_end: bool = True
    eval_at_start: bool = False
    checkpoint_every: int = 10
    log_transcripts_every: int = 10
    transcripts_per_phase: int = 4
    progress_bar: bool = True
    profile: bool = False  # torch profiler tables of the top operations per phase, for steps 1..profile_steps
    profile_steps: int = 2


@dataclass
class HardwareConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    static_cache: bool = False
    torch_threads: Optional[int] = None


@dataclass
class LoggerConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: Optional[str] = None
    experiment_name: str = "alive"
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    log_transcripts: bool = True
    log_traces: bool = True
    system_metrics: bool = True
    system_metrics_every: float = 10.0


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    output_dir: str = "outputs"


@dataclass
class OracleConfig:
    kind: OracleKind = OracleKind.rule
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    timeout_s: float = 30.0
    max_retries: int = 2
    max_new_tokens: int = 256
    temperature: float = 0.0


@dataclass
class CriticConfig:
    writer: CriticWriter = CriticWriter.self  # oracle: the `oracle` group's critic writes every critique of the run


@dataclass
class RolesConfig:
    constructor: str = ""
    solver: str = ""
    reviewer: str = ""
    reviewer_blind: str = ""
    refiner: str = ""
    fcp_solver: str = ""


@dataclass
class WarmstartConfig:
    enabled: bool = False
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    cosine_steps: Optional[int] = None  # the cosine schedule's horizon (null: `steps`, annealed to zero)
    max_minutes: float = 6.0
    stop_accuracy: Optional[float] = None  # stop at the first check where validation accuracy reaches it
    # and, at that check, every named validation suite reaches its floor, e.g. {math_longer_validation: 0.12}
    stop_floors: dict[str, float] = field(default_factory=dict)
    check_every: int = 5
    check_from: int = 100
    check_size: int = 100
    train_docs: int = 20000
    eval_size: int = 200
    seed: int = 0
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    mix: dict[str, float] = field(default_factory=lambda: {
        "constructor": 0.1, "solver": 0.5, "reviewer": 0.2, "reviewer_blind": 0.1, "refiner": 0.1})
    # every role ready before RL (alive_exp.readiness): at a check where the solver's floors hold, each role is
    # measured on the solver's own samples of validation problems; the build stops when every floor holds too
    role_floors: Optional[dict[str, float]] = field(default_factory=dict)  # reviewer, reviewer_blind, refiner_fixes, refiner_keeps; null: none
    max_missing_verdicts: Optional[float] = None  # at most this share of reviews without a parseable verdict
    readiness_samples: int = 2  # solver samples per problem the roles are measured on
    role_mix: Optional[dict[str, float]] = None  # the mix once the solver's floors have held (null: `mix`)
    # reviewers learn from what they will judge: this share of reviewer, refiner and FCP transcripts is about the
    # model's own samples (at trainer.generation.temperature), refreshed every own_samples_every steps
    own_samples: float = 0.0
    own_samples_from: int = 100
    own_samples_every: int = 25
    own_samples_pool: int = 256




@dataclass
class VLLMConfig:
    url: Optional[str] = None  # attach to a running server; null: the run starts one and stops it at its end
    python: str = ".venv-vllm/bin/python"  # vLLM's own environment (scripts/setup_vllm.sh)
    max_lora_rank: int = 16
    max_model_len: Optional[int] = None  # null: the model's max_position_embeddings
    concurrency: int = 64  # requests in flight (the server batches them)
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 600.0
    extra_args: list[str] = field(default_factory=list)  # more `vllm serve` flags, e.g. [--tensor-parallel-size, "2"]
    env: dict[str, str] = field(default_factory=dict)  # the server's extra environment, e.g. CUDA_VISIBLE_DEVICES


@dataclass
class RolloutConfig:
    engine: RolloutEngine = RolloutEngine.hf
    # the run stops when the mean |learner - sampler| log-prob per token exceeds it (null: logged only)
    max_logprob_gap: Optional[float] = None
    # truncated importance sampling: policy-gradient tokens weighted by min(p_learner / p_engine, tis_cap)
    tis_cap: Optional[float] = None
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    roles: RolesConfig = field(default_factory=RolesConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    seed: int = 0
    task_name: str = "train"
    resume: Optional[str] = None  # a checkpoint path, or "auto" for <output_dir>/checkpoints/last.ckpt
    experiment_name: Optional[str] = None  # set by +experiment=...


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)
