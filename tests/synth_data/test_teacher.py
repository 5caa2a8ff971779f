import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from affinage.core.chat_model import LocalChatModel
from synth_data.teacher import TeacherError, load_teacher, paraphrase


def test_teacher_is_chosen_by_configuration(tiny_settings, tiny_model_dir):
    serving = FakeListChatModel(responses=["x"])
    assert load_teacher(tiny_settings, local=serving) is serving
    other = load_teacher(tiny_settings.model_copy(update={"teacher_model": str(tiny_model_dir)}), local=serving)
    assert isinstance(other, LocalChatModel)
    remote = load_teacher(tiny_settings.model_copy(update={
        "teacher_model": "big-teacher", "teacher_base_url": "http://127.0.0.1:9/v1", "teacher_api_key": SecretStr("k")}),
        local=serving)
    assert isinstance(remote, ChatOpenAI) and remote.model_name == "big-teacher"


def test_paraphrases_are_parsed_and_never_repeat_the_question():
    teacher = FakeListChatModel(responses=["1) How do I reset it?\n- How do I reset it?\n\n2. Reset steps?\nReset my password"])
    assert paraphrase(teacher, "Reset my password", 5) == ["How do I reset it?", "Reset steps?"]


def test_unreachable_teacher_raises_a_teacher_error(tiny_settings):
    remote = load_teacher(tiny_settings.model_copy(update={
        "teacher_model": "t", "teacher_base_url": "http://127.0.0.1:9/v1"}), local=None)
    remote.max_retries = 0
    with pytest.raises(TeacherError, match="teacher failed"):
        paraphrase(remote, "q", 2)
