"""HTTP request and response bodies (they are the OpenAPI schema served at /openapi.json)."""
from __future__ import annotations

import math
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Preference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quality: float = Field(..., ge=0.0, le=1.0, description="w_q, weight on the task score")
    cost: float = Field(..., ge=0.0, le=1.0, description="w_c, weight on the normalised dollar cost")


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, description="the user's prompt")
    preference: Union[Preference, float] = Field(
        0.8, description="{quality, cost} on the simplex, or one knob k in [0,1] meaning (k, 1-k)"
    )
    mode: Literal["explore", "greedy", "sample"] = Field(
        "explore",
        description=(
            "explore (default): the service's exploring policy chooses, (1 - epsilon) of the time by the "
            "learned policy and epsilon spread over the allowed models; this is what lets the router learn "
            "from feedback and follow changes. greedy: pure exploitation, the learned policy's argmax; the "
            "answer is the best the router knows today, and feedback on it teaches the router almost nothing "
            "about other models. sample: alias of explore (kept for older clients)."
        ),
    )
    candidates: Optional[list[str]] = Field(None, min_length=1, description="restrict routing to these models")

    @field_validator("preference")
    @classmethod
    def _on_simplex(cls, v):
        if isinstance(v, Preference):
            if not math.isclose(v.quality + v.cost, 1.0, abs_tol=1e-4):
                raise ValueError(f"quality + cost must be 1, got {v.quality} + {v.cost}")
            return v
        if isinstance(v, bool) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(f"a single knob must be a number in [0, 1], got {v}")
        return v

    def weights(self) -> tuple[float, float]:
        if isinstance(self.preference, Preference):
            return self.preference.quality, self.preference.cost
        return float(self.preference), 1.0 - float(self.preference)


class RouteResponse(BaseModel):
    request_id: str
    model: str
    probabilities: dict[str, float] = Field(..., description="the distribution the model was drawn from")
    propensity: float = Field(..., description="probability with which `model` was chosen (1 for greedy)")
    mode: Literal["explore", "greedy"]
    policy_version: int
    replica: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(..., min_length=1, max_length=128)
    score: float = Field(..., ge=0.0, le=1.0, allow_inf_nan=False, description="task score q of the answer")
    cost: float = Field(..., ge=0.0, allow_inf_nan=False, description="dollars the call cost")


class FeedbackResponse(BaseModel):
    request_id: str
    reward: float
    accepted: bool = True
    sequence: int = Field(..., description="position of this reward in the training stream (the trainer's offset unit)")


class ErrorBody(BaseModel):
    error: str


class RouteOptions(BaseModel):
    """`barp` in a chat request: how barp-auto routes it (the prompt is the last user message)."""

    model_config = ConfigDict(extra="forbid")
    preference: Union[Preference, float] = RouteRequest.model_fields["preference"]
    mode: Literal["explore", "greedy", "sample"] = "explore"
    candidates: Optional[list[str]] = Field(None, min_length=1, description="restrict routing to these models")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ... pass through
    role: str
    content: Union[str, list[dict], None] = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Fields barp does not read (temperature, tools, ...) pass
    through to the chosen model's upstream unchanged."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="'barp-auto' to let the router choose, or a served model's name")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = Field(False, description="server-sent events in OpenAI's chunk format, ending with data: [DONE]")
    barp: Optional[RouteOptions] = None


class BarpInfo(BaseModel):
    request_id: str = Field(..., description="post feedback against this id")
    model: str
    policy_version: int


class ChatCompletionResponse(BaseModel):
    """The upstream's chat completion as it answered, plus `barp` when barp-auto routed it."""

    model_config = ConfigDict(extra="allow")
    barp: Optional[BarpInfo] = None
