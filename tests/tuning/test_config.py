import pytest

from tuning.config import RunConfig, describe, load_config


def test_method_defaults_are_filled_in():
    sft, dpo = RunConfig(method="sft").resolved(), RunConfig(method="dpo").resolved()
    assert sft.packing is True and sft.learning_rate == 2e-4
    assert dpo.packing is False and dpo.learning_rate == 5e-5


@pytest.mark.parametrize("overrides, named", [
    ({"method": "dpo", "packing": True}, "packing"),
    ({"save_steps": 15, "eval_steps": 10}, "save_steps (15) must be a multiple of eval_steps (10)"),
    ({"lora_r": 0}, "lora_r"),
    ({"val_fraction": 0.7}, "val_fraction"),
    ({"lr_scheduler": "sawtooth"}, "lr_scheduler"),
    ({"epochs": 0, "max_steps": -1}, "epochs"),
    ({"method": "rlhf"}, "method 'rlhf'"),
    ({"start_from": " "}, "start_from"),
])
def test_conflicting_or_bad_values_are_named(overrides, named):
    with pytest.raises(ValueError, match="bad run config") as error:
        RunConfig(**overrides).resolved()
    assert named in str(error.value)


@pytest.mark.parametrize("line, error", [
    ('packing = "yes"', "packing = 'yes' is not a boolean or null"),  # a field whose default is None
    ('learning_rate = true', "learning_rate = True is not a number or null"),
    ("target_modules = [1, 2]", "target_modules = [1, 2] is not a string or a list of strings"),
    ("lora_r = 2.5", "lora_r = 2.5 is not an integer"),
])
def test_config_values_must_fit_their_field(tmp_path, line, error):
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=error.replace("[", "\\[").replace("]", "\\]")):
        load_config(path, "sft")


def test_config_file_is_read(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("lora_r = 8\nlearning_rate = 1e-3\n")
    config = load_config(path, "sft")
    assert (config.lora_r, config.learning_rate, config.method) == (8, 1e-3, "sft")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml", "sft")


@pytest.mark.parametrize("text, message", [
    ("lora_rank = 8\n", "unknown keys lora_rank"),
    ('lora_r = "eight"\n', "lora_r = 'eight' is not an integer"),
    ('method = "dpo"\n', "sets method 'dpo' but --method is 'sft'"),
    ("lora_r = [\n", "not valid TOML"),
])
def test_a_bad_config_file_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path, "sft")


def test_every_field_is_documented():
    for line in describe().splitlines():
        assert line.split("#", 1)[1].strip(), line


@pytest.mark.parametrize("cuda, gpu_bf16, cpu_bf16, default, allowed", [
    (False, False, True, False, True),  # AVX512-BF16 or AMX: on request only (its candidates fell for more attacks)
    (False, False, False, False, False),  # emulated on the CPU: slower than float32
    (True, True, False, True, True),
    (True, False, True, False, False),  # the GPU trains: the CPU's support does not count
])
def test_bf16_is_the_default_on_a_gpu_and_allowed_where_the_hardware_computes_it(monkeypatch, cuda, gpu_bf16,
                                                                                  cpu_bf16, default, allowed):
    import torch

    import tuning.recipes as recipes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: gpu_bf16)
    monkeypatch.setattr(recipes, "cpu_computes_bf16", lambda: cpu_bf16)
    assert recipes.use_bf16(RunConfig(method="sft")) is default
    assert recipes.use_bf16(RunConfig(method="sft", bf16=False)) is False  # the run config's word wins
    problem = recipes.hardware_problem(RunConfig(method="sft", bf16=True))
    assert problem is None if allowed else "bf16=true needs a GPU that supports bfloat16 or a CPU" in problem
