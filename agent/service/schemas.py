"""Request and response bodies. Chat requests follow OpenAI's chat completions API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = True


class ChatRequest(BaseModel):
    """OpenAI's fields that affinage honours; others that clients send are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="A name from /v1/models; 'default' or omitted means the active version.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    n: int | None = Field(None, ge=1, description="Choices to generate: only 1 is supported; more is refused with 400.")
    user: str | None = Field(None, max_length=200)
    conversation_id: str | None = Field(None, max_length=64, description="affinage extension: groups turns in the log.")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Field(..., min_length=1, max_length=64)
    rating: Literal["up", "down"]
    correction: str | None = Field(None, description="The answer the assistant should have given.")
    comment: str | None = None


class FeedbackResponse(BaseModel):
    id: str
    interaction_id: str
    rating: str


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
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
