"""The one record that carries data through the pipeline: a `Sample`.

A sample starts as a prompt read from the dataset, is grown by a rollout function (generation, tools, or the SFT
reader's tokenisation) and ends as token ids, a response-aligned loss mask and a reward that the rollout manager turns
into training data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass
class SpecInfo:
    """Speculative-decoding acceptance statistics accumulated over a sample's generation."""

    spec_accept_token_num: int = 0
    spec_draft_token_num: int = 0
    spec_verify_ct: int = 0
    completion_token_num: int = 0


@dataclass
class PrefixCacheInfo:
    """How many prompt tokens the inference engine served from its prefix cache."""

    cached_tokens: int = 0
    total_prompt_tokens: int = 0


@dataclass
class Sample:
    """One prompt and (after rollout) its tokens, loss mask and reward.

    `tokens` holds prompt + response. `loss_mask` is response-aligned: its length equals `response_length`, and the
    response is the tail of `tokens` starting at the first trainable token (user turns inside a multi-turn response
    are part of the response with mask 0).
    """

    class Status(Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    group_index: int | None = None
    index: int | None = None
    # None until the rollout manager assigns one; samples of one multi-sample rollout must share it.
    rollout_id: int | None = None
    prompt: str | list[dict[str, Any]] = ""
    tokens: list[int] = field(default_factory=list)
    multimodal_inputs: dict[str, Any] | None = None
    multimodal_train_inputs: dict[str, Any] | None = None
    multimodal_train_input_id: int | None = None
    apply_chat_template_kwargs: dict[str, Any] | None = None
    response: str = ""
    response_length: int = 0
    label: Any = None
    reward: float | dict[str, Any] | None = None
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)
    rollout_log_probs: list[float] | None = None
    rollout_top_p_token_ids: list[int] | None = None
    rollout_top_p_offsets: list[int] | None = None
    rollout_routed_experts: Any = None
    remove_sample: bool = False
    teacher_log_probs: list[float] | None = None
    status: Status = Status.PENDING
    metadata: dict[str, Any] = field(default_factory=dict)
    generate_function_path: str | None = None
    custom_rm_path: str | None = None
    train_metadata: dict[str, Any] | None = None
    session_id: str | None = None
    non_generation_time: float = 0.0
    spec_info: SpecInfo = field(default_factory=SpecInfo)
    prefix_cache_info: PrefixCacheInfo = field(default_factory=PrefixCacheInfo)

    def to_dict(self) -> dict[str, Any]:
        """A plain-Python dict (status as its string value) that `from_dict` turns back into an equal sample."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["status"] = self.status.value
        out["spec_info"] = dataclasses.asdict(self.spec_info)
        out["prefix_cache_info"] = dataclasses.asdict(self.prefix_cache_info)
        # Attributes a plugin attached beyond the declared fields travel too.
        for key, value in vars(self).items():
            if key not in out:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        if "status" in data and not isinstance(data["status"], Sample.Status):
            data["status"] = Sample.Status(data["status"])
        if isinstance(data.get("spec_info"), dict):
            data["spec_info"] = SpecInfo(**data["spec_info"])
        if isinstance(data.get("prefix_cache_info"), dict):
            data["prefix_cache_info"] = PrefixCacheInfo(**data["prefix_cache_info"])
        sample = cls(**data)
        for key, value in extra.items():
            setattr(sample, key, value)
        return sample

    def get_reward_value(self, args: Any) -> Any:
        reward_key = getattr(args, "reward_key", None)
        return self.reward[reward_key] if reward_key else self.reward

    @property
    def effective_response_length(self) -> int:
        return sum(self.loss_mask) if self.loss_mask is not None else self.response_length

    def append_response_tokens(
        self,
        tokens: list[int],
        *,
        log_probs: list[float] | None = None,
        trainable: bool = True,
        text: str = "",
        finish_reason: str | None = None,
        weight_version: str | None = None,
    ) -> None:
        """Grow the response, keeping `loss_mask` and `rollout_log_probs` aligned with it.

        Trainable tokens (the policy's own output) must carry log-probs when the sample tracks them; tokens that come
        from a tool or environment are appended with mask 0 and log-prob 0.0.
        """
        if trainable and self.rollout_log_probs is not None and log_probs is None:
            raise ValueError("trainable tokens appended to a sample that tracks rollout_log_probs need log_probs")
        if log_probs is not None and len(log_probs) != len(tokens):
            raise ValueError(f"{len(log_probs)} log-probs for {len(tokens)} tokens")
        if self.loss_mask is None:
            self.loss_mask = [1] * self.response_length
        self.tokens.extend(tokens)
        self.response += text
        self.response_length += len(tokens)
        self.loss_mask.extend([1 if trainable else 0] * len(tokens))
        if log_probs is not None or self.rollout_log_probs is not None:
            if self.rollout_log_probs is None:
                self.rollout_log_probs = [0.0] * (self.response_length - len(tokens))
            self.rollout_log_probs.extend(log_probs if trainable and log_probs is not None else [0.0] * len(tokens))
        if weight_version is not None:
            self.weight_versions.append(weight_version)
        if finish_reason is not None:
            self.status = _FINISH_REASON_TO_STATUS.get(finish_reason, Sample.Status.COMPLETED)
        assert len(self.loss_mask) == self.response_length
        assert self.rollout_log_probs is None or len(self.rollout_log_probs) == self.response_length


_FINISH_REASON_TO_STATUS = {
    "length": Sample.Status.TRUNCATED,
    "abort": Sample.Status.ABORTED,
    "stop": Sample.Status.COMPLETED,
}
