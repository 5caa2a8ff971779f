"""The workspace's own golden set: built from thumbs-up answers and knowledge-base questions, held out from
training, and chosen by the gates only when the operator supplied none and it is large enough."""

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from sqlalchemy import delete

from affinage.core.datasets import write_dataset
from affinage.core.prompts import prompt_messages
from affinage.core.settings import load_settings
from affinage.core.store import Store
from affinage.core.tables import Feedback, Interaction
from synth_data.builder import protected_paths, protected_questions
from synth_data.golden import Passage, build_workspace_golden
from synth_data.teacher import TeacherError, question_for
from tuning.gate_sets import BUNDLED_GOLDEN, gate_sets

PASSAGES = [
    Passage("billing/refunds.md#annual", "Refunds\nAnnual plans are refundable within 30 days of purchase."),
    Passage("account/passwords.md#reset", "Passwords\nThe reset link stays valid for sixty minutes."),
    Passage("integrations/slack.md#setup", "Slack\nInstall the Slack app from Settings > Integrations first."),
    Passage("billing/invoices.md#vat", "Invoices\nEvery invoice shows the VAT number of your company."),
]
QUESTIONS = {"30 days": "Can I still get my money back on a yearly plan?", "sixty": "How long does a reset email work?",
             "Slack": "Where do I find the Slack app?", "VAT": "Does my invoice carry our tax number?"}


class Teacher(FakeListChatModel):
    """Writes a fixed question for each knowledge-base sentence it is shown."""

    def _call(self, messages, *args, **kwargs):
        return "1. " + next(q for key, q in QUESTIONS.items() if key in messages[-1].content)


@pytest.fixture
def workspace(tmp_path):
    settings = load_settings(tmp_path / "home", golden_min_rows=3, golden_kb_questions=3)
    store = Store(settings.db_url)
    for n, (question, answer, rating, correction) in enumerate([
            ("How do I turn on two-factor sign-in? Mail me at ann@example.com", "Open Profile > Security.", "up", None),
            ("Which plans include the Jira integration?", "Business and Enterprise.", "up", None),
            ("Are monthly plans refunded?", "Yes, always.", "down", None),
            ("Can I pay by bank transfer?", "No.", "up", "Yes, on annual plans.")]):
        interaction = Interaction(id=f"i{n}", question=question, answer=answer, prompt_version="v", model_version="m",
                                  latency_s=0.1, retrieved=[{"chunk_id": "c", "source": f"page{n}.md#a", "score": 0.9}])
        store.add(interaction)
        store.add(Feedback(interaction_id=f"i{n}", rating=rating, correction=correction))
    yield settings, store
    store.close()


def golden_rows(settings):
    return [json.loads(line) for line in settings.workspace_golden_path.read_text().splitlines()]


def test_thumbs_up_answers_and_teacher_questions_make_the_workspace_set(workspace):
    settings, store = workspace
    built = build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    rows = golden_rows(settings)
    assert (built["thumbs_up"], built["knowledge_base"], built["rows"]) == (2, 3, 5)
    assert [r["origin"] for r in rows] == ["thumbs-up", "knowledge-base"] * 2 + ["knowledge-base"]  # taking turns
    up = [r for r in rows if r["origin"] == "thumbs-up"]
    assert [r["interaction_id"] for r in up] == ["i0", "i1"]  # never one rated down or corrected
    assert "ann@example.com" not in up[0]["question"] and up[0]["answer"] == "Open Profile > Security."
    assert up[0]["source"] == "page0.md#a"
    kb = [r for r in rows if r["origin"] == "knowledge-base"]
    assert all(r["question"] in QUESTIONS.values() and r["answer"] in {p.text.split("\n")[1] for p in PASSAGES}
               for r in kb)
    again = build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    assert golden_rows(settings) == rows and again["added"] == 0  # a resumed job writes the same set
    with store.session() as session:  # what an erasure does to the interaction
        session.execute(delete(Feedback).where(Feedback.interaction_id == "i0"))
        session.execute(delete(Interaction).where(Interaction.id == "i0"))
    build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    assert [r for r in golden_rows(settings) if r["origin"] == "thumbs-up"] == up[1:]


def test_a_question_any_dataset_trains_on_leaves_the_set_and_synth_protects_the_rest(workspace):
    settings, store = workspace
    trained = "Which plans include the Jira integration?"
    write_dataset(settings.datasets_dir, {"sft": [{"messages": [*prompt_messages(trained, ["Business has Jira."]),
                                                                 {"role": "assistant", "content": "Business."}]}]},
                  {"base_model": "m"})
    built = build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    assert built["dropped_as_near_training"] == 1
    assert trained not in [r["question"] for r in golden_rows(settings)]
    assert settings.workspace_golden_path in protected_paths(settings)
    assert set(r["question"] for r in golden_rows(settings)) <= set(protected_questions(protected_paths(settings)))


def test_the_gates_use_the_workspace_set_and_say_so(workspace):
    settings, store = workspace
    build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    sets = gate_sets(settings, {})
    assert sets.golden_origin == "workspace: 2 thumbs-up + 3 from the knowledge base"
    assert [r["question"] for r in sets.golden] == [r["question"] for r in golden_rows(settings)]


def test_an_operators_set_wins(workspace, tmp_path):
    settings, store = workspace
    build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"question": "Do you ship to Mars?", "answer": "No."}) + "\n")
    sets = gate_sets(settings.model_copy(update={"golden_set": mine}), {})
    assert sets.golden_origin == f"operator: {mine}"
    assert [r["question"] for r in sets.golden] == ["Do you ship to Mars?"]
    demo = gate_sets(settings.model_copy(update={"golden_set": BUNDLED_GOLDEN}), {})  # what `affinage demo` sets
    assert demo.golden_origin == "bundled demo set"


def test_too_small_a_workspace_set_falls_back_to_the_bundled_one_and_says_why(workspace):
    settings, store = workspace
    settings = settings.model_copy(update={"golden_kb_questions": 0, "golden_min_rows": 5})
    build_workspace_golden(settings, store, PASSAGES, Teacher(responses=["unused"]))
    sets = gate_sets(settings, {})
    assert sets.golden_origin == ("bundled demo set (the workspace's own has 2 rows, fewer than "
                                  "golden_min_rows = 5)")
    assert sets.golden[0]["question"] == json.loads(BUNDLED_GOLDEN.read_text().splitlines()[0])["question"]
    assert gate_sets(load_settings(settings.home / "other"), {}).golden_origin.startswith(
        "bundled demo set (the workspace's own has 0 rows")


def test_a_teacher_reply_without_a_question_is_an_error():
    teacher = FakeListChatModel(responses=["Here you go:\n- \"How long is the link valid?\"", "Sure thing."])
    assert question_for(teacher, "The reset link stays valid for sixty minutes.") == "How long is the link valid?"
    with pytest.raises(TeacherError, match="no question"):
        question_for(teacher, "The reset link stays valid for sixty minutes.")


def test_a_teacher_that_writes_no_questions_is_asked_a_bounded_number_of_times(workspace):
    settings, store = workspace
    teacher = FakeListChatModel(responses=["Sure thing."] * 100)
    many = [Passage(f"page{n}.md", f"Page {n}\nThis page explains setting number {n} in detail.") for n in range(50)]
    built = build_workspace_golden(settings.model_copy(update={"golden_kb_questions": 3}), store, many, teacher)
    assert built["knowledge_base"] == 0 and teacher.i == 6  # 2 x golden_kb_questions tries, then it stops
