import json

import pytest

from affinage.core.datasets import write_dataset
from tests.tuning.conftest import rows
from tuning.data import load_training_data, split


def load(settings, dataset_id=None, method="sft", base="tiny"):
    return load_training_data(settings.datasets_dir, dataset_id, method, base, 0.2, 1)


def test_sft_rows_become_prompt_completion_with_a_held_out_group(tiny_settings):
    write_dataset(tiny_settings.datasets_dir, rows(), {"base_model": "tiny"})
    data = load(tiny_settings)
    row = data.train[0]
    assert row["completion"][-1]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
    assert len(data.train) + len(data.validation) == 6 and data.validation


def test_paraphrases_of_one_answer_stay_on_one_side_of_the_split():
    answers = ["a", "a", "a", "b", "b", "c", "d", "e"]
    data = [{"prompt": [], "completion": [{"role": "assistant", "content": a}]} for a in answers]
    train, validation = split(data, 0.25, seed=3)
    assert not {r["completion"][0]["content"] for r in train} & {r["completion"][0]["content"] for r in validation}


def test_no_dataset_yet(tiny_settings):
    with pytest.raises(ValueError, match="no dataset .* yet: build one with `affinage synth`"):
        load(tiny_settings)


def test_unknown_dataset_is_named(tiny_settings):
    write_dataset(tiny_settings.datasets_dir, rows(), {"base_model": "tiny"})
    with pytest.raises(ValueError, match="dataset 'ds-nope' does not exist"):
        load(tiny_settings, "ds-nope")


def test_dataset_for_another_base_model_is_refused(tiny_settings):
    write_dataset(tiny_settings.datasets_dir, rows(), {"base_model": "Qwen2.5-0.5B-Instruct"})
    with pytest.raises(ValueError, match="built for base model 'Qwen2.5-0.5B-Instruct', but training would start from 'tiny'"):
        load(tiny_settings)


def test_empty_rows_for_the_method_are_refused(tiny_settings):
    write_dataset(tiny_settings.datasets_dir, {"sft": rows()["sft"]}, {"base_model": "tiny"})
    with pytest.raises(ValueError, match="has no preference rows, which method dpo trains on"):
        load(tiny_settings, method="dpo")


def test_kto_needs_both_labels(tiny_settings):
    kto = [dict(r, label=True) for r in rows()["kto"]]
    write_dataset(tiny_settings.datasets_dir, {"kto": kto}, {"base_model": "tiny"})
    with pytest.raises(ValueError, match="both desirable and undesirable"):
        load(tiny_settings, method="kto")


@pytest.mark.parametrize("line, problem", [
    ("{not json", "line 1 is not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "line 1: 'messages' must be a list of at least two"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}),
     "the last message must be a non-empty assistant answer"),
])
def test_malformed_rows_are_named_by_line(tiny_settings, line, problem):
    manifest = write_dataset(tiny_settings.datasets_dir, {"sft": rows()["sft"]}, {"base_model": "tiny"})
    folder = tiny_settings.datasets_dir / manifest["id"]
    (folder / "sft.jsonl").write_text(line + "\n")
    # a hand-edited file no longer matches its manifest: re-record the hash to reach the schema check
    import hashlib
    manifest["files"]["sft.jsonl"] = hashlib.sha256((line + "\n").encode()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=problem):
        load(tiny_settings)


def test_tampered_dataset_is_refused(tiny_settings):
    manifest = write_dataset(tiny_settings.datasets_dir, rows(), {"base_model": "tiny"})
    with (tiny_settings.datasets_dir / manifest["id"] / "sft.jsonl").open("a") as handle:
        handle.write("{}\n")
    with pytest.raises(ValueError, match="does not match its recorded hash"):
        load(tiny_settings)
