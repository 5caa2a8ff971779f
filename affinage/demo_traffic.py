"""The demo's simulated support traffic: the traffic file, the agent answering it on the API channel and a support
agent rating each answer (thumbs-up when the assistant's own sentence holds the line's key fact, else thumbs-down
with the line's reference answer as the correction: the quoted passage sentences after it are the knowledge base's,
not the model's), and the paraphrases a stronger teacher wrote for it, replayed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from affinage.core.jsonl import numbered_lines
from affinage.core.metrics import contains_fact
from affinage.core.prompts import generated_part
from agent.feedback import record_feedback
from synth_data.teacher import PARAPHRASE_SYSTEM


def read_traffic(path: Path) -> list[dict]:
    """Lines of {question, answer, key_fact, source?, paraphrases?}; a bad line is named by number."""
    if not path.is_file():
        raise FileNotFoundError(f"traffic file not found: {path}")
    rows = []
    for number, row in numbered_lines(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        for key in ("question", "answer", "key_fact"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path}:{number}: '{key}' must be a non-empty string")
        if not isinstance(row.get("paraphrases", []), list):
            raise ValueError(f"{path}:{number}: 'paraphrases' must be a list of strings")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no traffic")
    return rows


class RecordedTeacher(BaseChatModel):
    """Replays paraphrases a stronger teacher wrote for the traffic questions; anything else goes to ``fallback``.

    SmolLM2-135M answers a request to paraphrase instead of paraphrasing, which would leave synth with no held-out
    set; a real deployment points ``teacher_model`` at a larger model instead.
    """

    recorded: dict[str, list[str]]
    fallback: Any

    @property
    def _llm_type(self) -> str:
        return "recorded-teacher"

    @property
    def model_name(self) -> str:
        return f"recorded paraphrases + {getattr(self.fallback, 'model_name', type(self.fallback).__name__)}"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        question = str(messages[-1].content).rsplit("\n", 1)[-1].strip()
        if messages[0].content == PARAPHRASE_SYSTEM and question in self.recorded:
            return ChatResult(generations=[ChatGeneration(message=AIMessage("\n".join(self.recorded[question])))])
        return ChatResult(generations=[ChatGeneration(message=self.fallback.invoke(messages, stop=stop, **kwargs))])


def replay_traffic(agent, traffic: list[dict], note) -> dict[str, dict]:
    """Every traffic line asked through the API channel and rated as a support agent would: thumbs-up when the
    answer holds the key fact, else thumbs-down with the reference answer as the correction. Returns the traffic
    line of each interaction."""
    by_interaction: dict[str, dict] = {}
    for number, row in enumerate(traffic):
        user = f"demo-agent-{number % 3 + 1}"
        answer = agent.ask(row["question"], channel="api", user=user)
        by_interaction[answer.interaction_id] = row
        good = contains_fact(generated_part(answer.answer), row["key_fact"])
        if good:
            record_feedback(agent.store, answer.interaction_id, "up", user=user)
        else:
            record_feedback(agent.store, answer.interaction_id, "down", correction=row["answer"],
                            comment=f"the answer should say {row['key_fact']!r}", user=user)
        note(f"{'up  ' if good else 'DOWN'} {row['question'][:70]}")
    return by_interaction
