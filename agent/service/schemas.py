"""Request and response bodies. Chat requests follow OpenAI's chat completions API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _no_nul(value: str) -> str:
    """PostgreSQL's text refuses NUL, so it is refused here as bad input (400) on every database alike."""
    if "\x00" in value:
        raise ValueError("text must not contain a NUL character (\\u0000)")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]  # every client-sent string that may reach the database


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _content_has_no_nul(cls, content):
        _no_nul("".join(part.text for part in content) if isinstance(content, list) else content or "")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = True


class ChatRequest(BaseModel):
    """OpenAI's fields that affinage honours; others that clients send are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = Field(None, description="A name from /v1/models; 'default' or omitted means the active version.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int | None = Field(None, ge=1, description="Choices to generate: only 1 is supported; more is refused with 400.")
    user: Text | None = Field(None, max_length=200)
    conversation_id: Text | None = Field(None, max_length=64, description="affinage extension: groups turns in the log.")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interaction_id: Text = Field(..., min_length=1, max_length=64)
    rating: Literal["up", "down"]
    correction: Text | None = Field(None, description="The answer the assistant should have given.")
    comment: Text | None = None


class FeedbackResponse(BaseModel):
    id: str
    interaction_id: str
    rating: str


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(..., min_length=1, max_length=200)
    role: Literal["agent", "operator", "admin"]


class KeyInfo(BaseModel):
    name: str
    role: str
    prefix: str
    created_at: str


class CreatedKey(KeyInfo):
    key: str = Field(..., description="Shown once; only its hash is stored.")


class CorrectionInfo(BaseModel):
    id: str
    interaction_id: str
    question: str
    answer: str
    correction: str
    comment: str | None
    submitted_by: str | None
    created_at: str


class ReviewResult(BaseModel):
    id: str
    review: Literal["approved", "rejected"]
    example_id: str | None = None


class ForgetRequest(BaseModel):
    """Exactly one selector (two or none: 400 naming them); ``check`` erases nothing and says what is left."""

    model_config = ConfigDict(extra="forbid")

    customer: str | None = Field(None, max_length=200, description="The end customer's id (OpenAI's `user`).")
    conversation: str | None = Field(None, max_length=64)
    interaction: str | None = Field(None, max_length=64)
    matching: str | None = Field(None, max_length=200, description="An email address or a name, matched "
                                 "case-insensitively in questions, answers, corrections and the example bank.")
    check: bool = False


class GuardEvent(BaseModel):
    """An answer the output guards changed before the customer saw it (its ``output_guard`` signal)."""

    at: str
    interaction_id: str
    model_version: str = Field(description="The version that answered.")
    removed: str = Field(description="What the customer was not shown: off-policy links, or 'system prompt'.")
    question: str
