"""``TokenMask-v0``: learn which tokens of a document a reconstructor can do without."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from tokenmask.config import ConfigError, build_config
from tokenmask.envs.corpus import CorpusSource, DocumentCorpus
from tokenmask.envs.env_config import TokenMaskConfig
from tokenmask.envs.episodes import EpisodeBatch, EpisodeRecord, check_actions
from tokenmask.envs.judge_bonus import JudgeBonus
from tokenmask.envs.rewards import MaskingReward, make_reward
from tokenmask.reconstructors import Reconstructor


def resolve_config(config: TokenMaskConfig | None, options: dict[str, Any]) -> TokenMaskConfig:
    """The config from a ``TokenMaskConfig`` and/or keyword options (options win).

    :raises ValueError: an unknown option (the message lists the valid ones) or a bad value.
    """
    values = dict(vars(config)) if config is not None else {}
    values.update(options)
    try:
        return build_config(TokenMaskConfig, values)
    except ConfigError as exc:
        raise ValueError(f"TokenMask-v0: {exc}") from exc


def build_components(
    config: TokenMaskConfig,
    documents: CorpusSource | None,
    reconstructor: Reconstructor | None,
    reward: MaskingReward | None,
    judge: Reconstructor | None = None,
) -> tuple[Reconstructor, DocumentCorpus, MaskingReward, JudgeBonus | None]:
    """The reconstructor (given or loaded), the corpus, the reward and the judge bonus of an environment.

    The bonus is ``None`` when ``recoverability_weight`` and ``retention_weight`` are 0; otherwise
    its judge is ``judge`` or, when none is given, ``judge_name`` loaded on the env's device.
    """
    if reward is not None and not isinstance(reward, MaskingReward):
        raise ValueError(
            f"reward must be a MaskingReward instance, got {type(reward).__name__}. Fix: or use reward_type=NAME."
        )
    if reconstructor is None:
        reconstructor = Reconstructor.load(config.model_name, device=config.device, dtype=config.dtype)
    elif not isinstance(reconstructor, Reconstructor):
        raise ValueError(
            f"reconstructor must be a tokenmask Reconstructor, got {type(reconstructor).__name__}."
        )
    corpus = DocumentCorpus.build(
        documents if documents is not None else config.data_path,
        reconstructor,
        split=config.split,
        text_column=config.text_column,
        max_tokens=config.max_tokens,
        min_tokens=config.effective_min_tokens,
        continuation_tokens=config.continuation_tokens,
    )
    if reward is None:
        reward = make_reward(config.reward_type, config.bits_weight, config.rate_penalty)
    bonus = None
    if config.judge_bonus:
        if judge is None:
            judge = Reconstructor.load(
                config.judge_name, device=config.device, dtype=config.judge_dtype, add_mask_token=False
            )
        bonus = JudgeBonus(judge, reconstructor, config.recoverability_weight, config.retention_weight)
    return reconstructor, corpus, reward, bonus


class EpisodeBatchMixin:
    """What the single and the vector env share: building their parts and reading the episode batch."""

    metadata: dict[str, Any]
    config: TokenMaskConfig
    reconstructor: Reconstructor
    corpus: DocumentCorpus
    reward: MaskingReward
    bonus: JudgeBonus | None
    render_mode: str | None
    _batch: EpisodeBatch

    def _setup(
        self,
        num_rows: int,
        config: TokenMaskConfig | None,
        options: dict[str, Any],
        documents: CorpusSource | None,
        reconstructor: Reconstructor | None,
        reward: MaskingReward | None,
        render_mode: str | None,
        judge: Reconstructor | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"Unknown render_mode {render_mode!r}. Fix: use None or one of {self.metadata['render_modes']}."
            )
        self.config = resolve_config(config, options)
        self.reconstructor, self.corpus, self.reward, self.bonus = build_components(
            self.config, documents, reconstructor, reward, judge
        )
        self._batch = EpisodeBatch(
            self.config, self.corpus, self.reconstructor, self.reward, num_rows=num_rows, bonus=self.bonus
        )
        self.render_mode = render_mode

    @property
    def vocab_size(self) -> int:
        """Size of the token-id range; also the padding id of ``token_ids`` and ``context_ids``."""
        return self._batch.vocab_size

    @property
    def pad_id(self) -> int:
        """Padding id of the id observations (= ``vocab_size``)."""
        return self._batch.pad_id

    @property
    def mask_token_id(self) -> int:
        """Id that shows a masked token in ``context_ids``."""
        return self._batch.mask_id

    @property
    def documents(self) -> list[np.ndarray]:
        """The token-id documents episodes are drawn from."""
        return self.corpus.documents

    def pop_completed_episodes(self) -> list[EpisodeRecord]:
        """Finished episodes (of every sub-env; document ids and the agent's mask) since the last call, oldest first."""
        records = list(self._batch.completed)
        self._batch.completed.clear()
        return records


class TokenMaskEnv(EpisodeBatchMixin, gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Learned context compression: mask the tokens a language model can recover.

    ## Description
    An episode is one document. The agent walks it window by window (``window`` tokens per step)
    and decides, for every token of the window, whether to mask it (drop it from the compressed
    text) or keep it. A causal LM, the *reconstructor*, prices each masked token in bits: how hard
    it is to recover from what is left. The agent learns to mask the target share of tokens while
    paying as few bits as possible, i.e. to forget what the reconstructor can recover.

    ## Action Space
    ``MultiBinary(window)``: 1 = mask the token, 0 = keep it. With ``span > 1``,
    ``MultiBinary(window // span)``: entry ``j`` masks or keeps the run of tokens ``j * span`` to
    ``(j + 1) * span - 1`` of the window together (contiguous masks are one decision, not
    ``span`` independent ones). Tokens past the document's end (``valid == 0``) are ignored.
    Another shape raises ``ValueError``.

    ## Observation Space
    A ``Dict`` (contract shared with the SB3 policies; sizes come from the space)::

        "token_ids":       Box(0, V, (window,), int64)    window's token ids; V = vocab_size = padding id
        "context_ids":     Box(0, V, (2*context_size,), int64)
                           context_size tokens before the window (tokens the agent masked are
                           shown as the mask token id), then context_size after it; padded with V
        "token_features":  Box(-inf, inf, (window, 5), float32)   per token, from ONE reconstructor
                           pass over the unmasked document at reset: surprisal_bits -log2 p(x_i|x_<i),
                           entropy_bits of p(.|x_<i), is_top1, next_surprisal_bits, position i/n
                           (0 at padding). With token_features="position" only the position
                           is filled (the rest 0, and mean_masked_bits 0): no LM pass, so a
                           compressor made of that agent runs without one
        "valid":           MultiBinary(window)            1 = real token, 0 = padding past the end
        "global_features": Box(-inf, inf, (6,), float32)  progress (decided/n), target_rate,
                           rate_so_far, required_rate (rate the rest needs), window_fill,
                           mean_masked_bits (cost bits per masked token so far)

    ``V = len(reconstructor.tokenizer)`` (the mask token included), so an embedding table for
    these ids needs ``V + 1`` rows. Names are in ``TOKEN_FEATURES`` and ``GLOBAL_FEATURES``.

    ## Rewards
    Pluggable (``reward_type`` or a ``MaskingReward`` instance as ``reward=``). With ``n`` the
    document's tokens, ``m_i`` = 1 for a masked real token and ``c_i`` its cost in bits, step t
    (window ``W_t``) earns ``r_t = (1/n) * sum_{i in W_t} m_i * (1 - bits_weight * c_i)``, and the
    last step adds ``-rate_penalty * |rate - target_rate|`` with ``rate = sum m_i / n``.

    - ``information`` (default): ``c_i = -log2 p(x_i | masked prefix)`` under the reconstructor,
      computed when the step is taken with a KV cache of the episode's masked prefix (all windows
      of a vector env in one batched forward). ``mask_mode="delete"``: masked tokens are removed
      from the reconstructor's input, as from the compressed text the judge reads, and a masked
      token is predicted after the last kept token before it. ``mask_mode="placeholder"``: the
      mask token stands in its place. Equal to ``Reconstructor.token_bits`` on the masked document.
    - ``simple``: ``c_i`` = the ``surprisal_bits`` feature (no LM pass per step).

    Judge bonus (``recoverability_weight > 0`` or ``retention_weight > 0``, off by default): what a
    frozen judge LM (``judge=`` or ``judge_name``) gets from the kept tokens, as in docs/evaluation.md
    (see :mod:`tokenmask.envs.judge_bonus`)::

        bonus(mask) = recoverability_weight * rec + retention_weight * ret
        rec = (R(empty) - R(kept)) / (R(empty) - R(document)),  R(p) = NLL(document | BOS + p + "\n\n")
        ret = (F(empty) - F(kept)) / (F(empty) - F(document)),  F(p) = NLL(continuation | BOS + p)

    each clipped to [-1, 2]; ``continuation`` = the ``continuation_tokens`` ids that follow the
    document in its text (never observed). ``judge_credit="terminal"`` (default): the last step adds
    ``bonus(final mask)``. ``judge_credit="dense"``: every step adds ``Phi(after) - Phi(before)``,
    ``Phi`` = the bonus of the mask decided so far with every undecided token kept (``Phi`` before
    the first step = ``bonus(keep-all)``), so an episode's judge rewards sum to
    ``bonus(final mask) - bonus(keep-all)``: the same optimum, each window's judge cost paid at the
    step that decides it. The per-token reward favours scattered masks of predictable tokens; the
    bonus, readable contiguous spans (recoverability) and the tokens the continuation needs (retention).

    ``info`` of each step: ``rate`` (masked / decided so far), ``target_rate``, ``rate_error``,
    ``masked_tokens``, ``decided_tokens``, ``doc_tokens``, ``step_bits`` (cost bits of this step's
    masked tokens), ``bits`` (so far), ``document`` (corpus index); at the last step,
    ``episode_record`` (an :class:`~tokenmask.envs.EpisodeRecord`: the document's ids and the
    agent's mask, e.g. for fine-tuning the reconstructor) and, with the judge bonus on,
    ``recoverability`` and (with continuations) ``retention`` of the final mask, in both credit modes.

    ## Starting State
    ``reset(seed=...)`` seeds the document order (a seeded permutation per pass over the corpus,
    or corpus order with ``shuffle=False``) and the target-rate draws. Options: ``document``
    (play this corpus index), ``target_rate`` (this episode's rate). The first window is shown.

    ## Episode End
    Terminated after the window holding the document's last token; padding past the end never
    counts. No truncation (episodes have at most ``ceil(max_tokens / window)`` steps).

    ## Arguments
    Any field of :class:`~tokenmask.envs.TokenMaskConfig` as a keyword (``window=16``,
    ``span=1`` (tokens per action entry; must divide ``window``), ``context_size=8``, ``target_rate=0.5``, ``target_rate_range=None``,
    ``reward_type="information"``, ``bits_weight=0.1``, ``rate_penalty=4.0``,
    ``continuation_tokens=0`` (T: texts are cut into ``max_tokens + T`` tokens, the last T of each
    piece being the document's continuation; a list of token ids not longer than that: each
    item's last T ids), ``recoverability_weight=0.0``, ``retention_weight=0.0`` (needs
    ``continuation_tokens > 0``; the weights' sum stays below ``rate_penalty``),
    ``judge_credit="terminal"`` (or ``"dense"``), ``judge_name="default"``, ``mask_mode="delete"``,
    ``data_path="sample"``, ``split="train"``, ``max_tokens=512``,
    ``min_tokens=None`` (one window), ``model_name="default"``, ``device="auto"``, ...), or
    ``config=TokenMaskConfig(...)``; plus objects: ``documents=`` (texts, token-id lists, a
    ``datasets.Dataset`` or a ``DocumentCorpus``; overrides ``data_path``), ``reconstructor=``
    (shared with fine-tuning: the env always prices with its current weights), ``reward=``,
    ``judge=`` (the judge bonus's frozen judge).
    ``gym.make("TokenMask-v0")`` works offline: embedded SmolLM2, corpus shipped in the package.

    ## Version History
    - v0: first version; ``span`` (tokens per action entry, default 1 = the original per-token actions) added
      without changing the default spaces; ``recoverability_weight`` (the judge's end-of-episode bonus,
      default 0 = the rewards of before) added; ``continuation_tokens``, ``retention_weight`` and
      ``judge_credit`` added (defaults 0, 0, ``"terminal"`` = the rewards of before); texts are cut at
      character boundaries (no document ends inside a character of several tokens).

    :param config: options; keyword ``options`` override its fields.
    :param documents: the corpus in memory (see above); default: ``config.data_path``.
    :param reconstructor: an already loaded reconstructor; default: load ``config.model_name``.
    :param reward: a reward instance; default: built from ``reward_type``.
    :param judge: the frozen judge of the judge bonus (``recoverability_weight`` or
        ``retention_weight > 0``); default: load ``judge_name``.
    :param render_mode: ``None`` or ``"ansi"`` (the masked text so far).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        config: TokenMaskConfig | None = None,
        *,
        documents: CorpusSource | None = None,
        reconstructor: Reconstructor | None = None,
        reward: MaskingReward | None = None,
        judge: Reconstructor | None = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        self._setup(1, config, options, documents, reconstructor, reward, render_mode, judge)
        self.observation_space = self._batch.observation_space()  # type: ignore[assignment]
        self.action_space = self._batch.action_space()

    @classmethod
    def from_texts(
        cls,
        texts: CorpusSource,
        target_rate: float = 0.5,
        reconstructor: Reconstructor | None = None,
        **options: Any,
    ) -> TokenMaskEnv:
        """An env over exactly these texts (or token-id lists), in order, at a fixed rate.

        For running a trained agent as a compressor: no shuffling, whole texts (no cutting), no
        text dropped for being short.

        :param texts: texts, token-id lists, or any corpus source.
        :param target_rate: the rate requested.
        :param reconstructor: reuse a loaded reconstructor.
        """
        options = {"shuffle": False, "max_tokens": None, "min_tokens": 1, **options}
        return cls(documents=texts, reconstructor=reconstructor, target_rate=target_rate, **options)

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode on the next document; see the class docstring (Starting State)."""
        super().reset(seed=seed)
        if self._batch.rngs[0] is not self.np_random:
            self._batch.seed_row(0, self.np_random)
        infos = self._batch.reset_rows(np.zeros(1, dtype=np.int64), [options])
        obs = {k: v[0] for k, v in self._batch.observe().items()}
        return obs, {k: v[0].item() for k, v in infos.items()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Decide the current window; see the class docstring (Rewards, Episode End)."""
        if not self._batch.active[0]:
            raise RuntimeError("The episode has ended (or was never started). Fix: call env.reset() first.")
        actions = check_actions(action, (self.config.action_size,))[None, :]
        rewards, terminated, infos = self._batch.step(actions)
        obs = {k: v[0] for k, v in self._batch.observe().items()}
        # one row: terminal-only keys (TERMINAL_INFOS) are present exactly when this episode ended
        info = {k: v[0].item() if isinstance(v[0], np.generic) else v[0] for k, v in infos.items()}
        return obs, float(rewards[0]), bool(terminated[0]), False, info

    def render(self) -> str | None:  # type: ignore[override]
        """``ansi``: the document decided so far, masked tokens shown as the mask token."""
        if self.render_mode != "ansi":
            return None
        return self._batch.masked_text(0)
