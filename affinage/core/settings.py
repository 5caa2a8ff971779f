"""One typed Settings object, built once by the entry point and passed in.

Precedence, highest first: explicit arguments (CLI flags), ``AFFINAGE_*``
environment variables, ``<home>/config.toml``, the defaults below.
Nothing here is read at import time.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from affinage.core.links import check_domain
from affinage.core.settings_loop import LoopSettings

DEFAULT_HOME = Path(".affinage")
EMBEDDED_CHAT_MODEL = "smollm2"
EMBEDDED_EMBEDDER = "all-MiniLM-L6-v2"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The workspace: ``--home``, else ``$AFFINAGE_HOME``, else ``./.affinage``."""
    return Path(home or os.environ.get("AFFINAGE_HOME") or DEFAULT_HOME)


class Settings(LoopSettings):
    model_config = SettingsConfigDict(env_prefix="AFFINAGE_", extra="forbid", validate_default=True)

    home: Path = Field(DEFAULT_HOME, description="Workspace: everything affinage writes lives here.")
    chat_model: str = Field(
        EMBEDDED_CHAT_MODEL,
        description="'smollm2' (embedded SmolLM2-135M-Instruct), a Hugging Face model id or local path, "
        "or the model name served by an OpenAI-compatible endpoint when openai_base_url is set.",
    )
    openai_base_url: str | None = Field(None, description="OpenAI-compatible chat endpoint, e.g. http://host:8000/v1.")
    openai_api_key: SecretStr | None = Field(None, description="Key for openai_base_url.")
    remote_lora: Literal["off", "vllm"] = Field(
        "off", description="How promotions reach the server at openai_base_url: 'off' (the server's own weights "
        "answer; promotions change nothing there) or 'vllm' (a vLLM server started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: the active LoRA version is loaded into it under its version id and "
        "every request names it; rollback routes back).")
    remote_registry_dir: str | None = Field(
        None, description="With remote_lora = 'vllm': the registry folder (<home>/registry) as the vLLM server "
        "sees it, when it mounts it elsewhere (e.g. /mnt/affinage/registry); default: its absolute path here.")
    embedder: str = Field(
        EMBEDDED_EMBEDDER,
        description="'all-MiniLM-L6-v2' (embedded) or any sentence-transformers model id or local path.",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/affinage.db.")
    chunk_chars: int = Field(700, ge=100, le=20_000, description="Largest chunk, in characters.")
    chunk_overlap_chars: int = Field(120, ge=0, description="Characters shared by consecutive chunks of a section.")
    top_k: int = Field(4, ge=1, le=50, description="Passages retrieved per question.")
    min_score: float = Field(
        0.3, ge=-1.0, le=1.0,
        description="Cosine similarity below which retrieval is too weak to answer: the agent abstains.",
    )
    score_margin: float = Field(
        0.15, ge=0.0, le=2.0,
        description="Passages scoring this far below the best one are left out of the prompt: less noise for small models.",
    )
    few_shot_k: int = Field(2, ge=0, le=10, description="Example-bank entries shown to the model.")
    few_shot_min_score: float = Field(0.55, ge=-1.0, le=1.0, description="Only examples this similar are shown.")
    verified_answer_min_score: float = Field(
        0.9, ge=-1.0, le=1.0,
        description="An operator-approved correction answers a question at least this similar verbatim.",
    )
    quote_sentences: int = Field(
        3, ge=1, le=10,
        description="Passage sentences closest to the question that the model reads and the answer quotes.")
    quote_min_similarity: float = Field(
        0.35, ge=-1.0, le=1.0,
        description="A sentence less similar to the question than this is not quoted; with none left, the agent abstains.")
    allowed_link_domains: list[str] | None = Field(
        None,
        description="Domains an answer may link to ('example.com' allows its subdomains, '*.example.com' only them). "
                    "Unset: the hosts the ingested knowledge base links to; [] : no links at all. The streaming output "
                    "guard removes any other link before the customer sees it. A passage sentence is quoted with a "
                    "link only to a domain listed here (never by the unset default: a planted page vouches for itself).")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Longest generated answer, in tokens.")
    max_answer_sentences: int = Field(
        1, ge=0, le=100,
        description="Local models stop after this many sentences (0: no limit): the quoted passage sentences follow.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0, description="Local models only.")

    teacher_model: str = Field(
        "local",
        description="Writes grounded answers and paraphrases for training data: 'local' (the chat model), a Hugging "
        "Face id or local folder, or a model name at teacher_base_url.",
    )
    teacher_base_url: str | None = Field(None, description="OpenAI-compatible endpoint for the teacher.")
    teacher_api_key: SecretStr | None = Field(None, description="Key for teacher_base_url.")
    paraphrases: int = Field(3, ge=0, le=20, description="Paraphrases of each failed question in SFT data.")
    heldout_paraphrases: int = Field(
        1, ge=0, le=10, description="More paraphrases of each failed question, never trained on: the held-out set the "
        "gates measure a candidate's gain on (more per failure: more power for the paired test).")
    injection_hardening: int = Field(
        1, ge=0, le=10, description="Rows per trained failure whose passages carry a planted instruction, link or "
        "person's details, with the clean answer (or, asked for the details, a refusal) as target, plus a preference "
        "pair that rejects obeying it (0: none).")
    golden_set: Path | None = Field(
        None, description="The operator's golden question set (JSONL). Unset: the gates use the workspace's own "
        "(built at synth time from thumbs-up answers and knowledge-base questions) once it holds golden_min_rows, "
        "else the bundled demo set.")
    golden_min_rows: int = Field(
        20, ge=1, description="Rows the workspace's own golden set needs before the gates use it instead of the "
        "bundled demo set.")
    golden_thumbs_up: int = Field(
        40, ge=0, description="Most thumbs-up questions the workspace's golden set holds (held out from training).")
    golden_kb_questions: int = Field(
        24, ge=0, description="Questions the teacher writes from sampled knowledge-base sentences for the "
        "workspace's golden set (0: none).")
    protected_sets: list[Path] = Field(
        default_factory=list, description="More JSONL question sets that must never leak into training data.")
    max_user_share: float = Field(
        0.25, gt=0.0, le=1.0, description="Per-user cap (poisoning defence): the largest share of a dataset's "
        "failures (interactions, with every row derived from them) one user may contribute, above min_user_failures "
        "(1: no cap). Held-out rows are never dropped by it.")
    min_user_failures: int = Field(
        20, ge=1, description="Per-user cap's floor: failures any one user may always contribute to a dataset, "
        "however small the team.")
    min_groundedness: float = Field(0.5, ge=0.0, le=1.0, description="Teacher answers less grounded than this are dropped.")
    rate_limit_per_minute: int = Field(60, ge=1, description="Chat requests per API key per minute.")
    feedback_per_minute: int = Field(
        30, ge=1, description="Feedback posts (thumbs, corrections) per API key per minute.")
    max_message_chars: int = Field(8000, ge=1, description="Longest accepted message or correction, in characters.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a client may ask for.")
    max_queue: int = Field(8, ge=0, description="Chat requests that may wait for the model; more get 503 at once.")
    batched_generation: bool = Field(
        True, description="Local models: concurrent chat answers are generated together (transformers' continuous "
        "batching, the system prompt prefilled once); false: one at a time.")
    max_batch_size: int = Field(
        16, ge=1, le=256, description="Local models, batched: answers generated together; more wait in the queue.")
    serving_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Local models: the precision answers (and the gates' measures of them) are computed in. "
        "auto: bfloat16 on a CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX: half the memory, and faster), "
        "else float32. Training keeps float32.")
    kv_cache_tokens: int = Field(
        8192, ge=256, description="Local models, batched: the KV cache, in tokens, for every running answer's prompt "
        "and answer (a prefix they share counted once); a prompt and answer over it alone gets 400.")
    max_in_flight_per_key: int = Field(
        2, ge=1, description="Chat requests one API key may have in progress at once; more get 429 at once, so one key "
        "cannot fill the queue.")
    prompt_tokens_per_minute: int = Field(
        12_000, ge=100, description="Prompt tokens (the client's messages that reach the model, counted by a local "
        "model's tokenizer, else estimated at 4 characters a token) per API key per minute; over it, 429.")
    queue_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for a local model busy with other answers; a request that "
        "waited this long without starting gets 503.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_connections: int = Field(
        256, ge=1, description="`affinage serve`: open connections (idle keep-alive ones included) and running "
        "requests it accepts; a request beyond either gets uvicorn's plain 503 at once. Bounds what slow or idle "
        "clients can hold; a body that trickles in is bounded only by a reverse proxy (docs/deployment.md).")
    shutdown_grace_seconds: int = Field(
        60, ge=1, le=3600, description="`affinage serve` on SIGTERM: requests still open after this long (a long "
        "stream, a client that never finishes its body) are cancelled; below systemd's 90 s stop timeout.")

    @field_validator("allowed_link_domains")
    @classmethod
    def _domains(cls, domains: list[str] | None) -> list[str] | None:
        return None if domains is None else [check_domain(domain) for domain in domains]

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.chunk_overlap_chars >= self.chunk_chars:
            raise ValueError(
                f"chunk_overlap_chars ({self.chunk_overlap_chars}) must be smaller than chunk_chars ({self.chunk_chars})"
            )
        if self.kv_cache_tokens < self.max_new_tokens + 128:
            raise ValueError(f"kv_cache_tokens ({self.kv_cache_tokens}) cannot hold one prompt and its answer: it must "
                             f"be at least max_new_tokens ({self.max_new_tokens}) + 128")
        if self.remote_lora == "vllm" and not self.openai_base_url:
            raise ValueError("remote_lora = 'vllm' needs openai_base_url: the vLLM server's address, "
                             "e.g. http://host:8000/v1")
        if self.remote_registry_dir is not None:
            if self.remote_lora == "off":
                raise ValueError("remote_registry_dir is set but remote_lora is 'off': it only tells a vLLM server "
                                 "where adapters are; set remote_lora = 'vllm' or remove it")
            if not self.remote_registry_dir.startswith("/"):
                raise ValueError(f"remote_registry_dir must be an absolute path on the vLLM server "
                                 f"(got {self.remote_registry_dir!r})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        home = resolve_home(init_settings.init_kwargs.get("home"))
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=home / "config.toml")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'affinage.db'}"

    @property
    def golden_path(self) -> Path:
        return self.golden_set or Path(str(resources.files("affinage") / "demo" / "golden.jsonl"))

    @property
    def workspace_golden_path(self) -> Path:
        """The workspace's own golden set (``synth_data.golden``)."""
        return self.home / "golden" / "workspace.jsonl"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def load_settings(home: str | os.PathLike | None = None, **overrides) -> Settings:
    """Build the Settings for a workspace; the entry points call this once."""
    return Settings(home=resolve_home(home), **overrides)
