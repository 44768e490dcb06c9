"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Fields follow OpenAI's API; `top_k` is an extension. Types are strict (a string is not a
number) and unknown fields are rejected, as OpenAI does, so a typo is a 400 and not a
silently ignored setting.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ChatRequest", "ClassifyRequest", "CompletionRequest", "ValidationError", "describe_error"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Sampling(_Request):
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict | None = None
    user: str | None = None
    # Accepted at their neutral values only (the decoding loop has no penalties or biases).
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logit_bias: dict[str, float] | None = Field(None, max_length=0)

    def stops(self):
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: Literal[1] | None = None
    suffix: None = None


class Message(_Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict]
    name: str | None = None

    def text(self):
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


class ClassifyRequest(_Request):
    model: str | None = None
    input: str | list[str]


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def describe_error(error):
    """`(message, param)` of a pydantic `ValidationError`: its first problem, in one line."""
    first = error.errors()[0]
    # A union's errors name the branch tried ('prompt.str', 'prompt.list[int]'): keep the field path.
    path = [str(p) for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    param = ".".join(path) or None
    if first["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first["type"] == "missing":
        return f"Missing required parameter: '{param}'", param
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
    return f"{param}: {first['msg']} (got {shown})", param
