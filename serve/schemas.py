"""HTTP request and response bodies (they are the OpenAPI schema served at /openapi.json)."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class Preference(BaseModel):
    """Weights on quality and cost, normalised to sum to 1 (so {1, 1} is an even trade-off); at least
    one must be above 0."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"properties": {"quality": {"exclusiveMinimum": 0}}}, {"properties": {"cost": {"exclusiveMinimum": 0}}}]})
    quality: float = Field(..., ge=0.0, le=1.0, strict=True, allow_inf_nan=False, description="w_q, weight on the task score")
    cost: float = Field(..., ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                        description="w_c, weight on the normalised dollar cost")


Knob = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]
# [w_q, w_c], the form the paper, the configs and the Python API write; normalised like {quality, cost}.
Pair = Annotated[list[Knob], Field(min_length=2, max_length=2, json_schema_extra={"contains": {"exclusiveMinimum": 0}})]


def _preference_form(v) -> str | None:
    if isinstance(v, (dict, Preference)):
        return "object"
    if isinstance(v, (list, tuple)):
        return "pair"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "knob"
    return None


# Tagged by the value's JSON type, so a wrong value is told what its own form needs (not three
# forms' complaints at once) and one of the wrong type gets one line naming the three forms.
PreferenceInput = Annotated[
    Union[Annotated[Preference, Tag("object")], Annotated[Pair, Tag("pair")], Annotated[Knob, Tag("knob")]],
    Discriminator(_preference_form, custom_error_type="preference_form",
                  custom_error_message="expected {quality, cost}, a [w_q, w_c] pair, or one number k in [0, 1] meaning (k, 1 - k)"),
]

def _whole_number(v: Any) -> Any:
    """JSON's integers, 3 or 3.0 (JSON Schema counts both), and nothing that only looks like one ("3", true)."""
    if isinstance(v, (bool, str)):
        raise ValueError("expected a whole number")
    return int(v) if isinstance(v, float) and v.is_integer() else v


MAX_TOKEN_COUNT = 10_000_000
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT), BeforeValidator(_whole_number)]
CostLimit = Annotated[float, Field(gt=0, le=1000, strict=True, allow_inf_nan=False)]  # dollars, a route's or a chat's max_cost
Capability = Literal["vision", "audio", "tools", "json_mode", "json_schema"]  # serve.settings.CAPABILITIES

DEFAULT_KNOB = 0.8  # a route that sends no preference, while no live budget is set: (0.8, 0.2)
PREFERENCE_HELP = ("{quality, cost} weights or a [w_q, w_c] pair (normalised to sum to 1), or one knob k in [0,1] meaning "
                   "(k, 1-k); omitted: the weight the live budget sets (user_config `budget`), else 0.8")


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, description="the user's prompt")
    preference: PreferenceInput = Field(DEFAULT_KNOB, description=PREFERENCE_HELP)
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
    max_latency_s: Optional[float] = Field(
        None, gt=0, le=3600, strict=True, description="leave out models whose recent answers took longer, by the latency_s clients "
                                         "report with feedback (a model with too few reports is kept); if none is fast "
                                         "enough, the fastest answers and latency_unmet is true")
    max_cost: Optional[CostLimit] = Field(
        None, description="dollars this request may cost at most: leave out models whose estimate for it (input_tokens x input price "
                    "+ output_tokens x output price, the served prices) is higher, and any model without a price; if none "
                    "fits, the cheapest answers and cost_unmet is true")
    input_tokens: Optional[TokenCount] = Field(
        None, description="the tokens your request to the model will hold (a system prompt, context), for max_cost, "
                          "the live budget and the models' context windows; default: the prompt's count")
    output_tokens: Optional[TokenCount] = Field(
        None, description="the answer length max_cost prices (your max_tokens makes the estimate a bound; default: the "
                          "checkpoint's assumed answer length), and the answer's cap a model's context window must also hold (default: 0)")
    needs: Optional[list[Capability]] = Field(
        None, description="what your request to the model takes beyond text (images: vision, input_audio: audio, tools, "
                          "response_format json_object: json_mode, json_schema): leave out models the service's capabilities "
                          "say lack one (a model it knows nothing of is kept); 422 if every candidate lacks one")

    @field_validator("preference")
    @classmethod
    def _on_simplex(cls, v):
        if isinstance(v, Preference):
            if not v.quality + v.cost > 0:
                raise ValueError("quality and cost cannot both be 0")
            return v
        if isinstance(v, list):
            if not sum(v) > 0:
                raise ValueError("w_q and w_c cannot both be 0")
            return v
        if isinstance(v, bool) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise ValueError(f"a single knob must be a number in [0, 1], got {v}")
        return v

    def weights(self) -> tuple[float, float]:
        p = self.preference
        if isinstance(p, (Preference, list)):
            wq, wc = (p.quality, p.cost) if isinstance(p, Preference) else p
            return wq / (wq + wc), wc / (wq + wc)
        return float(p), 1.0 - float(p)


class RouteResponse(BaseModel):
    request_id: str
    model: str
    probabilities: dict[str, float] = Field(..., description="the distribution the model was drawn from")
    propensity: float = Field(..., description="probability with which `model` was chosen (1 for greedy)")
    mode: Literal["explore", "greedy"]
    policy_version: int
    replica: str
    preference: list[float] = Field(..., description="[w_q, w_c] the route was made at: the request's, or, when it sent "
                                                     "none, the live budget's paced weight (else the default)")
    latency_unmet: Optional[bool] = Field(
        None, description="true: no candidate's reported latency met max_latency_s, so the fastest was used (absent otherwise)")
    cost_unmet: Optional[bool] = Field(
        None, description="true: no candidate's estimated cost met max_cost, so the cheapest was used (absent otherwise)")
    context_unmet: Optional[bool] = Field(
        None, description="true: the request's tokens overflow every candidate's known context window, so the model with the "
                          "largest was used (absent otherwise)")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(..., min_length=1, max_length=128)
    score: float = Field(..., ge=0.0, le=1.0, strict=True, allow_inf_nan=False, description="task score q of the answer")
    cost: Optional[float] = Field(None, ge=0.0, strict=True, allow_inf_nan=False,
                                  description="dollars the call cost; may be left out for a chat answer the service priced (its `barp.cost`)")
    latency_s: Optional[float] = Field(None, ge=0.0, le=3600, strict=True, allow_inf_nan=False,
                                       description="seconds the model took to answer, as you measured it: routes' max_latency_s reads the recent ones")


class WithdrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(..., min_length=1, max_length=128)


class WithdrawResponse(BaseModel):
    request_id: str
    withdrawn: bool = True


class FeedbackResponse(BaseModel):
    request_id: str
    reward: float
    accepted: bool = True
    sequence: int = Field(..., description="position of this reward in the training stream (the trainer's offset unit)")


class ErrorBody(BaseModel):
    error: str


class ChatError(BaseModel):
    message: str
    type: str = Field(..., description="invalid_request_error, authentication_error, permission_error, not_found_error, "
                                       "rate_limit_error or server_error")
    param: Optional[str] = Field(None, description="the request field the error is about, if one")
    code: Optional[str] = Field(None, description="e.g. context_length_exceeded")


class ChatErrorBody(BaseModel):
    """OpenAI's error shape: the chat endpoint answers its own errors in it, as its providers do, so an
    OpenAI client reads every error of this endpoint one way (error.message, .type, .code)."""

    error: ChatError


CHAT_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def chat_error(status: int, message: str, code: str | None = None) -> dict:
    """The chat endpoint's error body for one of this API's one-line errors ("field: what is wrong")."""
    field, sep, _ = message.partition(": ")
    param = field if sep and all(part.isidentifier() or part.isdigit() for part in field.split(".")) else None
    return {"error": {"message": message, "type": CHAT_ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}}


class MessagesError(BaseModel):
    type: str = Field(..., description="invalid_request_error, authentication_error, permission_error, not_found_error, "
                                       "request_too_large, rate_limit_error, api_error or overloaded_error")
    message: str


class MessagesErrorBody(BaseModel):
    """Anthropic's error shape: the Messages endpoint answers its errors, and its providers' passed on, in it."""

    type: Literal["error"]
    error: MessagesError


MESSAGES_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                        413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
                        529: "overloaded_error"}


def messages_error(status: int, message: str) -> dict:
    """The Messages endpoint's error body (Anthropic's shape) for one of this API's one-line errors."""
    return {"type": "error", "error": {"type": MESSAGES_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error"),
                                       "message": message}}


class RouteOptions(BaseModel):
    """`barp` in a chat request: how barp-auto routes it (the prompt is the last user message)."""

    model_config = ConfigDict(extra="forbid")
    preference: PreferenceInput = Field(DEFAULT_KNOB, description=PREFERENCE_HELP)
    mode: Literal["explore", "greedy", "sample"] = "explore"
    candidates: Optional[list[str]] = Field(None, min_length=1, description="restrict routing to these models")
    max_latency_s: Optional[float] = Field(
        None, gt=0, le=600, strict=True, description="leave out models whose recent answers here took longer (a stream: to its first chunk; "
                                        "else: the whole answer); if none is fast enough, the fastest answers")
    max_cost: Optional[CostLimit] = Field(
        None, description="dollars this request may cost at most: leave out models whose estimate is higher (every message's tokens "
                    "x input price + max_completion_tokens or max_tokens, else the checkpoint's assumed answer length, x output "
                    "price), and any model without a price; if none fits, the cheapest answers")
    fallbacks: Optional[list[str]] = Field(
        None, min_length=1, max_length=8,
        description="models to try in turn, not routed (nothing learned), when a named model's provider fails or is at its "
                    "concurrency cap, or when every model barp-auto tried failed at its provider; the answer's x-barp-model "
                    "header names the one that answered")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ... pass through
    role: str
    content: Union[str, list[dict], None] = None


# A user message with some non-blank text (a string, or a text part of multi-part content).
_TEXT = {"type": "string", "pattern": "\\S"}
USER_TEXT = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"const": "user"},
    "content": {"anyOf": [_TEXT, {"type": "array", "contains": {"type": "object", "required": ["text"],
                                                                  "properties": {"text": _TEXT}}}]}}}


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Fields barp does not read (temperature, tools, ...) pass
    through to the chosen model's upstream unchanged."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="'barp-auto' to let the router choose, or a served model's name")
    messages: list[ChatMessage] = Field(..., min_length=1, json_schema_extra={"contains": USER_TEXT},
                                        description="at least one user message with text: the last one is what the router reads")
    stream: bool = Field(False, strict=True, description="server-sent events in OpenAI's chunk format, ending with data: [DONE]")
    barp: Optional[RouteOptions] = None


class FailedUpstream(BaseModel):
    model: str
    status: int = Field(..., description="what this failure alone would have answered: 502, 504 or 429")
    error: str


class BarpInfo(BaseModel):
    request_id: str = Field(..., description="post feedback against this id")
    model: str
    policy_version: int
    preference: list[float] = Field(..., description="[w_q, w_c] the route was made at (none sent: the live budget's weight, else the default)")
    cost: Optional[float] = Field(
        None, description="dollars this answer cost at the served prices, from the provider's token usage (absent without usage or prices; "
                          "streamed: not in the first chunk, but kept for feedback when the stream reports usage)")
    judged: Optional[bool] = Field(
        None, description="true: handed to the service's judge, which grades it after judge.defer_s unless your own feedback came first")
    failed_over: Optional[list[FailedUpstream]] = Field(
        None, description="models whose provider failed on this request before `model` answered, in turn (absent when none did)")
    latency_unmet: Optional[bool] = Field(
        None, description="true: no candidate's recent latency met barp.max_latency_s, so the fastest was used (absent otherwise)")
    cost_unmet: Optional[bool] = Field(
        None, description="true: no candidate's estimated cost met barp.max_cost, so the cheapest was used (absent otherwise)")
    context_unmet: Optional[bool] = Field(
        None, description="true: the messages (and max_tokens) overflow every candidate's known context window, so the model "
                          "with the largest was used (absent otherwise)")


class ChatCompletionResponse(BaseModel):
    """The upstream's chat completion as it answered, plus `barp` when barp-auto routed it."""

    model_config = ConfigDict(extra="allow")
    barp: Optional[BarpInfo] = None


class LoadCheckpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, description="checkpoint directory or storage URI (file://, s3://, gs://)")
    mode: Literal["publish", "gated", "dry_run"] = Field(
        "publish", description="publish: now, no gate; gated: only if the rollout gate does not find it worse on the held-back "
                               "rewards (409 if it does, or if too few are held back); dry_run: judge it so, never publish")


class LoadCheckpointResponse(BaseModel):
    policy_version: int = Field(..., description="the version served now (the checkpoint's, if published)")
    published: bool = True
    estimate: Optional[dict] = Field(None, description="the rollout gate's off-policy estimates (gated and dry_run)")


# ---- OpenAI's Responses API (POST /v1/responses), answered by the chat models (serve/responses_api.py) ----

class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Part):
    type: Literal["input_text", "output_text"]
    text: str


class ImagePart(_Part):
    type: Literal["input_image"]
    image_url: str = Field(..., min_length=1, description="a URL or a data: URL (file ids are not kept here)")
    detail: Optional[Literal["low", "high", "auto"]] = None


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: dict = Field(..., description="{data: base64, format: wav | mp3}, as chat completions take it")


class FilePart(_Part):
    type: Literal["input_file"]
    file_data: str = Field(..., min_length=1, description="the file's contents as a data: URL (file ids are not kept here)")
    filename: Optional[str] = None


class RefusalPart(_Part):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[Union[TextPart, ImagePart, AudioPart, FilePart, RefusalPart], Field(discriminator="type")]


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")  # id, status of an earlier answer's item
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[ContentPart]]


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: str = Field(..., min_length=1)
    output: Union[str, list[ContentPart]]


class ReasoningItem(BaseModel):
    """An earlier answer's reasoning: accepted so a client may send its output back whole, and dropped
    (chat models take no reasoning items)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


InputItem = Annotated[
    Union[Annotated[MessageItem, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
          Annotated[FunctionCallOutputItem, Tag("function_call_output")], Annotated[ReasoningItem, Tag("reasoning")]],
    Discriminator(lambda v: (v.get("type", "message") if isinstance(v, dict) else getattr(v, "type", None)),
                  custom_error_type="input_item", custom_error_message="each input item is a message (role and content), "
                  "a function_call, a function_call_output or a reasoning item")]

# The whole input or its list holds a user message with some text: the router reads the last one.
_USER_ITEM = {"type": "object", "required": ["role", "content"], "properties": {
    "type": {"const": "message"}, "role": {"const": "user"}, "content": {"anyOf": [_TEXT, {"type": "array", "contains": {
        "type": "object", "required": ["type", "text"], "properties": {"type": {"const": "input_text"}, "text": _TEXT}}}]}}}


# Tagged by the value's JSON type, so a list's bad item is told what items may be, not also that a list is no string.
ResponsesInput = Annotated[
    Union[Annotated[str, Field(pattern=r"\S"), Tag("text")],
          Annotated[list[InputItem], Field(min_length=1, json_schema_extra={"contains": _USER_ITEM}), Tag("items")]],
    Discriminator(lambda v: "text" if isinstance(v, str) else "items" if isinstance(v, list) else None,
                  custom_error_type="input_form", custom_error_message="a string, or a list of input items")]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = Field(..., description="function tools only: the chat models run no hosted tools")

    @model_validator(mode="before")
    @classmethod
    def _function_only(cls, data):
        if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] != "function":
            raise ValueError(f"{data['type']!r} is a hosted tool, which chat models do not run; only function tools can be sent")
        return data
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = Field(None, strict=True)


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(..., min_length=1)


class PlainFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object"]


class SchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict = Field(..., alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = Field(None, strict=True)


TextFormat = Annotated[Union[PlainFormat, SchemaFormat], Field(discriminator="type")]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["low", "medium", "high"]] = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # summary: chat models give none
    effort: Optional[str] = Field(None, min_length=1, description="sent as chat's reasoning_effort")



class ResponsesRequest(BaseModel):
    """OpenAI's Responses API request, answered by a chat model (routed with barp-auto, or named):
    the input becomes chat messages, and the answer a Response. This service keeps no responses, so
    a conversation is sent whole in `input` each time. Fields barp does not read pass through to the
    chosen model's chat endpoint (temperature, top_p, user, parallel_tool_calls, ...)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str = Field(..., description="'barp-auto' to let the router choose, or a served model's name")
    input: ResponsesInput = Field(
        ..., description="a user's text, or the conversation's items, with at least one user message with text: the last "
                         "one is what the router reads")
    instructions: Optional[str] = Field(None, description="sent first, as a system message")
    stream: bool = Field(False, strict=True, description="server-sent events of the Responses API (response.created ... response.completed)")
    max_output_tokens: Optional[Annotated[int, Field(ge=1, le=MAX_TOKEN_COUNT), BeforeValidator(_whole_number)]] = Field(
        None, description="sent as max_completion_tokens")
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Optional[Union[Literal["auto", "none", "required"], ToolChoiceFunction]] = None
    text: Optional[TextConfig] = None
    reasoning: Optional[ReasoningConfig] = None
    store: Optional[bool] = Field(None, strict=True, description="accepted; nothing is stored (the answer says store: false)")
    metadata: Optional[dict[str, str]] = Field(None, description="echoed in the answer; not sent to the provider")
    previous_response_id: Any = Field(None, json_schema_extra={"type": "null"},
                                      description="not supported: this service keeps no responses (send the conversation in input)")
    conversation: Any = Field(None, json_schema_extra={"type": "null"},
                              description="not supported: this service keeps no conversations (send them in input)")
    prompt: Any = Field(None, json_schema_extra={"type": "null"}, description="not supported: no stored prompts here")
    background: Any = Field(None, json_schema_extra={"type": ["boolean", "null"], "enum": [False, None]},
                            description="not supported: answers are given while the request waits")
    barp: Optional[RouteOptions] = None

    @field_validator("previous_response_id", "conversation")
    @classmethod
    def _nothing_kept(cls, v):
        if v is not None:
            raise ValueError("this service keeps no responses or conversations: send the whole conversation in input")
        return v

    @field_validator("prompt")
    @classmethod
    def _no_stored_prompts(cls, v):
        if v is not None:
            raise ValueError("this service keeps no prompt templates: send instructions and input")
        return v

    @field_validator("background")
    @classmethod
    def _answered_now(cls, v):
        if v is not None and v is not False:  # 0 is no boolean
            raise ValueError("background responses are not supported: the answer comes while the request waits")
        return v


class ResponseObject(BaseModel):
    """The chat model's answer as a Response (output items and usage), plus `barp` when barp-auto routed it."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["response"]
    status: Literal["completed", "incomplete"]
    output: list[dict]
    barp: Optional[BarpInfo] = None


# ---- Anthropic's Messages API (POST /v1/messages), answered by the chat models (serve/anthropic_messages.py) ----

class AnthropicText(_Part):
    type: Literal["text"]
    text: str


class Base64Source(BaseModel):
    type: Literal["base64"]
    media_type: str = Field(..., min_length=1)
    data: str


class UrlSource(BaseModel):
    type: Literal["url"]
    url: str = Field(..., min_length=1)


class AnthropicImage(_Part):
    type: Literal["image"]
    source: Annotated[Union[Base64Source, UrlSource], Field(discriminator="type", description="base64 data or a URL "
                                                                                                "(file ids are not kept here)")]


class AnthropicToolUse(_Part):
    type: Literal["tool_use"]
    id: str = Field(..., min_length=1)
    name: str = Field(..., min_length=1)
    input: dict


class AnthropicToolResult(_Part):
    type: Literal["tool_result"]
    tool_use_id: str = Field(..., min_length=1)
    content: Union[str, list[Annotated[Union[AnthropicText, AnthropicImage], Field(discriminator="type")]]] = ""
    is_error: Optional[bool] = Field(None, strict=True)


class AnthropicThinking(_Part):
    """An earlier answer's thinking: accepted, so a client may send its turns back whole, and dropped."""

    type: Literal["thinking", "redacted_thinking"]


AnthropicBlock = Annotated[Union[AnthropicText, AnthropicImage, AnthropicToolUse, AnthropicToolResult, AnthropicThinking],
                           Field(discriminator="type")]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: Union[str, list[AnthropicBlock]]


_ANTHROPIC_USER_TEXT = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"const": "user"}, "content": {"anyOf": [_TEXT, {"type": "array", "contains": {
        "type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": _TEXT}}}]}}}


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Optional[str] = None
    input_schema: dict
    type: Optional[Literal["custom"]] = None

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, data):
        if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] != "custom":
            raise ValueError(f"{data['type']!r} is a server tool, which chat models do not run; only client tools "
                             "(name, input_schema) can be sent")
        return data


class AnyToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "none"]
    disable_parallel_tool_use: Optional[bool] = Field(None, strict=True)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tool"]
    name: str = Field(..., min_length=1, description="the tool to call")
    disable_parallel_tool_use: Optional[bool] = Field(None, strict=True)


AnthropicToolChoice = Annotated[Union[AnyToolChoice, NamedToolChoice], Field(discriminator="type")]


class MessagesRequest(BaseModel):
    """Anthropic's Messages API request, answered by a chat model (routed with barp-auto, or named):
    Anthropic's own clients (its SDKs, Claude Code with ANTHROPIC_BASE_URL) reach every model barp
    routes to. Fields with no chat form (thinking, cache_control, service_tier, ...) are not sent."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="'barp-auto' to let the router choose, or a served model's name")
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKEN_COUNT), BeforeValidator(_whole_number)] = Field(
        ..., description="sent as max_completion_tokens")
    messages: list[AnthropicMessage] = Field(..., min_length=1, json_schema_extra={"contains": _ANTHROPIC_USER_TEXT},
                                             description="at least one user message with text: the last one is what the router reads")
    system: Optional[Union[str, list[AnthropicText]]] = Field(None, description="sent first, as a system message")
    stream: bool = Field(False, strict=True, description="server-sent events of the Messages API (message_start ... message_stop)")
    stop_sequences: Optional[list[str]] = Field(None, description="sent as stop")
    temperature: Optional[float] = Field(None, ge=0, le=1, strict=True, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, ge=0, le=1, strict=True, allow_inf_nan=False)
    tools: Optional[list[AnthropicTool]] = None
    tool_choice: Optional[AnthropicToolChoice] = None
    metadata: Optional[dict] = Field(None, description="metadata.user_id is sent as user")
    barp: Optional[RouteOptions] = None


class MessageObject(BaseModel):
    """The chat model's answer as an Anthropic message (content blocks, stop_reason, usage), plus `barp`."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[dict]
    barp: Optional[BarpInfo] = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[AnthropicMessage] = Field(..., min_length=1)
    system: Optional[Union[str, list[AnthropicText]]] = None
    tools: Optional[list[AnthropicTool]] = None


class TokenCountResponse(BaseModel):
    input_tokens: int
