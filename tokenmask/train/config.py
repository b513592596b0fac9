"""``TrainConfig``: every option of ``tokenmask train`` (JSON file + ``--key value`` overrides).

The env's options sit in one nested object, the env's own :class:`~tokenmask.envs.TokenMaskConfig`::

    {"algo": "ppo", "total_timesteps": 2048, "env": {"window": 16, "max_tokens": 256}}

and are overridden as ``--env.window 32``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from tokenmask.envs.env_config import ENV_OPTION_KEYS, TokenMaskConfig
from tokenmask.errors import ConfigError

ALGORITHMS: tuple[str, ...] = ("ppo", "a2c")
TINY_RECONSTRUCTOR = "tiny-random"
"""Reconstructor name of a tiny randomly initialised Llama (unit tests only: fast, learns nothing useful)."""
TRAINER_SUPPLIED: dict[str, str] = {
    "model_name": "reconstructor",
    "dtype": "reconstructor_dtype",
    "device": "device",
}
"""Env options the trainer does not read (it hands the env its loaded reconstructor), and the train key that sets each."""


@dataclass
class TrainConfig:
    """Options of ``tokenmask train``; the resolved config is saved as ``config.json`` in the run folder.

    The env's options are not repeated here: ``env`` is the env's own :class:`TokenMaskConfig`
    (``"env": {...}`` in a JSON file, as RL Zoo nests ``env_kwargs``).
    """

    MOVED_KEYS: ClassVar[dict[str, str]] = {"judge": "env.judge_name"}
    """Top-level keys of the flat layout whose env key has another name (the others keep theirs)."""

    # ---- run
    run_dir: str = field(
        default="runs/debug", metadata={"help": "run folder: config, agent zip, reconstructor, TensorBoard"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the policy, the env and the evaluation"})
    device: str = field(
        default="auto", metadata={"help": "device of the policy and the LMs (auto: cuda > mps > cpu)"}
    )
    total_timesteps: int = field(default=2048, metadata={"help": "env steps (windows decided) to train for"})
    max_train_minutes: float | None = field(
        default=None,
        metadata={"help": "stop (and save) after this many minutes of training (None: no limit)"},
    )
    # ---- algorithm
    algo: str = field(default="ppo", metadata={"help": f"one of {list(ALGORITHMS)}"})
    learning_rate: float = field(default=3e-4, metadata={"help": "policy learning rate"})
    n_steps: int = field(default=32, metadata={"help": "steps per env per rollout"})
    batch_size: int = field(default=256, metadata={"help": "PPO minibatch size"})
    n_epochs: int = field(default=4, metadata={"help": "PPO epochs per rollout"})
    n_envs: int = field(
        default=8, metadata={"help": "episodes stepped together (one batched LM pass per step)"}
    )
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO clip range"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "policy gradient clipping"})
    target_kl: float | None = field(default=None, metadata={"help": "PPO early stop on KL (None: off)"})
    policy_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": 'TokenMaskPolicy kwargs, e.g. {"features_extractor_kwargs": {"d_model": 128}}'},
    )
    # ---- behaviour cloning before PPO (tokenmask label's output)
    pretrain: str | None = field(
        default=None,
        metadata={
            "help": "`tokenmask label` output folder: behaviour-clone the policy on it before PPO (None: off)"
        },
    )
    pretrain_epochs: int = field(
        default=5, metadata={"help": "passes over the labels when behaviour cloning"}
    )
    pretrain_batch_size: int = field(
        default=256, metadata={"help": "labelled windows per behaviour-cloning step"}
    )
    pretrain_learning_rate: float = field(default=3e-4, metadata={"help": "behaviour-cloning learning rate"})
    # ---- environment: every TokenMask-v0 option, defined once by the env's own config
    env: TokenMaskConfig = field(
        default_factory=TokenMaskConfig,
        metadata={
            "help": 'TokenMask-v0 options, the fields of TokenMaskConfig: the file\'s "env" object, --env.KEY VALUE here.\n'
            "env.judge_name is also the evaluation's judge; the reconstructor and the device come from the top-level keys."
        },
    )
    # ---- reconstructor (the judge is env.judge_name)
    reconstructor: str = field(
        default="default", metadata={"help": "reconstructor: default, .gguf, folder, hub id, tiny-random"}
    )
    reconstructor_dtype: str = field(
        default="auto", metadata={"help": "reconstructor dtype (auto: bf16 on cuda)"}
    )
    reconstructor_batch_size: int | None = field(
        default=None, metadata={"help": "sequences per LM forward pass"}
    )
    # ---- joint training of the reconstructor
    joint_period: int = field(
        default=0, metadata={"help": "fine-tune the reconstructor every K rollouts (0: never)"}
    )
    recon_learning_rate: float = field(default=1e-5, metadata={"help": "reconstructor learning rate"})
    recon_grad_accum_steps: int = field(default=1, metadata={"help": "reconstructor gradient accumulation"})
    recon_batch_docs: int = field(default=4, metadata={"help": "documents per reconstructor micro-batch"})
    recon_micro_batches: int = field(default=4, metadata={"help": "micro-batches per fine-tuning round"})
    recon_buffer: int = field(default=256, metadata={"help": "recent episodes the fine-tuning samples from"})
    # ---- evaluation against the baselines
    eval_freq: int = field(
        default=0, metadata={"help": "evaluate every N env steps (0: at the start and the end only)"}
    )
    eval_data_path: str | None = field(
        default=None, metadata={"help": "validation corpus (None: env.data_path)"}
    )
    eval_split: str = field(default="validation", metadata={"help": "split of a prepared validation corpus"})
    eval_documents: int = field(default=8, metadata={"help": "validation documents per evaluation"})
    eval_rate: float = field(default=0.5, metadata={"help": "rate asked of every method in the evaluation"})
    eval_methods: list[str] = field(
        default_factory=lambda: ["random", "frequency", "length", "self_information", "truncation"],
        metadata={"help": "baselines logged beside the agent"},
    )
    context_tokens: int = field(default=256, metadata={"help": "C of docs/evaluation.md"})
    continuation_tokens: int = field(default=64, metadata={"help": "T of docs/evaluation.md"})
    text_samples: int = field(default=2, metadata={"help": "masked-text samples logged per evaluation"})
    # ---- output
    checkpoint_freq: int = field(
        default=0, metadata={"help": "save the run folder every N env steps (0: at the end)"}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "complete checkpoints kept in the run folder (older ones deleted; >= 1)"}
    )
    progress_bar: bool = field(default=True, metadata={"help": "show a progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs under run_dir/tb"})
    verbose: int = field(default=0, metadata={"help": "SB3 verbosity (0, 1, 2)"})

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"Unknown algo {self.algo!r}. Fix: use one of {list(ALGORITHMS)}.")
        positive = {
            "total_timesteps": self.total_timesteps,
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "n_envs": self.n_envs,
            "recon_grad_accum_steps": self.recon_grad_accum_steps,
            "recon_batch_docs": self.recon_batch_docs,
            "recon_micro_batches": self.recon_micro_batches,
            "recon_buffer": self.recon_buffer,
            "eval_documents": self.eval_documents,
            "context_tokens": self.context_tokens,
            "continuation_tokens": self.continuation_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self._check_pretrain()
        self._check_keep_checkpoints()
        check_policy_kwargs(self.policy_kwargs)
        non_negative = {
            "joint_period": self.joint_period,
            "eval_freq": self.eval_freq,
            "checkpoint_freq": self.checkpoint_freq,
            "text_samples": self.text_samples,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        for name, rate in (
            ("learning_rate", self.learning_rate),
            ("recon_learning_rate", self.recon_learning_rate),
        ):
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"{name} must be a positive number, got {rate}.")
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise ValueError(f"max_train_minutes must be > 0 or None, got {self.max_train_minutes}.")
        if not 0.0 <= self.eval_rate < 1.0:
            raise ValueError(f"eval_rate must be in [0, 1), got {self.eval_rate}.")
        if not isinstance(self.env, TokenMaskConfig):
            raise ValueError(
                f"env must be a TokenMaskConfig, got {type(self.env).__name__}. Fix: env=TokenMaskConfig(...)."
            )
        defaults = TokenMaskConfig()
        for env_key, train_key in TRAINER_SUPPLIED.items():
            if getattr(self.env, env_key) != getattr(defaults, env_key):
                raise ValueError(
                    f"env.{env_key} is not read by tokenmask train: the trainer loads the reconstructor itself. "
                    f"Fix: set {train_key!r} instead and drop env.{env_key}."
                )
        if self.algo == "ppo" and self.n_steps * self.n_envs < 2:
            raise ValueError("PPO needs n_steps * n_envs >= 2 (a rollout of at least two samples).")

    def _check_pretrain(self) -> None:
        if self.pretrain is not None and (not isinstance(self.pretrain, str) or not self.pretrain.strip()):
            raise ConfigError(
                f"pretrain must be a `tokenmask label` output folder or null, got {self.pretrain!r}. "
                "Fix: name the folder, or set it to null to train without behaviour cloning.",
                key="pretrain",
            )
        for name in ("pretrain_epochs", "pretrain_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{name} must be an integer >= 1, got {value!r}. Fix: e.g. {name}=5.", key=name
                )
        rate = self.pretrain_learning_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ConfigError(
                f"pretrain_learning_rate must be a positive number, got {rate!r}. Fix: e.g. 3e-4.",
                key="pretrain_learning_rate",
            )

    def _check_keep_checkpoints(self) -> None:
        keep = self.keep_checkpoints
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(
                f"keep_checkpoints must be an integer >= 1 (complete checkpoints kept), got {keep!r}. "
                "Fix: e.g. keep_checkpoints=2.",
                key="keep_checkpoints",
            )

    @property
    def rollout_size(self) -> int:
        """Env steps per rollout (``n_steps * n_envs``)."""
        return self.n_steps * self.n_envs

    @property
    def joint_training(self) -> bool:
        """True when the reconstructor is fine-tuned during training."""
        return self.joint_period > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field (the env options as the ``"env"`` object)."""
        return asdict(self)


_CLASS_VALUED: tuple[str, ...] = ("activation_fn", "features_extractor_class", "optimizer_class")
"""``policy_kwargs`` keys whose value is a Python class (a JSON config cannot name one)."""


def constructor_keys(cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts: its ``__init__``'s, and its bases' while they take ``**kwargs``."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())
        keys |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(keys - {"self", *skip})


def check_policy_kwargs(policy_kwargs: Any) -> None:
    """Refuse ``policy_kwargs`` that :class:`~tokenmask.policies.TokenMaskPolicy` (or its features extractor) would not take.

    The policy module (torch, SB3) is imported only when ``policy_kwargs`` is not empty.

    :raises ConfigError: naming the key and the valid ones.
    """
    if not isinstance(policy_kwargs, dict):
        raise ConfigError(
            f"policy_kwargs must be a JSON object, got {policy_kwargs!r}. "
            'Fix: e.g. --policy_kwargs \'{"features_extractor_kwargs": {"d_model": 64}}\'.',
            key="policy_kwargs",
        )
    if not policy_kwargs:
        return
    from tokenmask.policies import TokenMaskExtractor, TokenMaskPolicy

    valid = constructor_keys(TokenMaskPolicy, skip=("observation_space", "action_space", "lr_schedule"))
    for key, value in policy_kwargs.items():
        if key not in valid:
            raise ConfigError(
                f"policy_kwargs: unknown key {key!r}; TokenMaskPolicy takes {', '.join(valid)}. "
                f"Fix: drop {key!r} or use one of those.",
                key=f"policy_kwargs.{key}",
            )
        if key in _CLASS_VALUED and not isinstance(value, type):
            raise ConfigError(
                f"policy_kwargs: {key} must be a Python class, got {value!r}; a config file cannot name one. "
                f"Fix: drop {key!r} (or pass the class through the Python API).",
                key=f"policy_kwargs.{key}",
            )
    extractor_kwargs = policy_kwargs.get("features_extractor_kwargs")
    if extractor_kwargs is None:
        return
    extractor = policy_kwargs.get("features_extractor_class", TokenMaskExtractor)
    if not isinstance(extractor_kwargs, dict):
        raise ConfigError(
            f"policy_kwargs: features_extractor_kwargs must be a JSON object, got {extractor_kwargs!r}. "
            'Fix: e.g. {"features_extractor_kwargs": {"d_model": 64}}.',
            key="policy_kwargs.features_extractor_kwargs",
        )
    valid_extractor = constructor_keys(extractor, skip=("observation_space",))
    for key in extractor_kwargs:
        if key not in valid_extractor:
            raise ConfigError(
                f"policy_kwargs: unknown features_extractor_kwargs key {key!r}; {extractor.__name__} takes "
                f"{', '.join(valid_extractor)}. Fix: drop {key!r} or use one of those.",
                key=f"policy_kwargs.features_extractor_kwargs.{key}",
            )


def nest_flat_layout(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config of the flat layout (env options at the top level, before ``"env"``) in today's layout.

    Run folders written before the env options were nested stay loadable; a config that already
    has an ``"env"`` object is returned unchanged.
    """
    if "env" in values:
        return dict(values)
    own = {f.name for f in fields(TrainConfig)}
    nested = {
        k: v
        for k, v in values.items()
        if k not in own and (k in ENV_OPTION_KEYS or k in TrainConfig.MOVED_KEYS)
    }
    out = {k: v for k, v in values.items() if k not in nested}
    out["env"] = {TrainConfig.MOVED_KEYS.get(k, f"env.{k}").partition(".")[2]: v for k, v in nested.items()}
    return out
