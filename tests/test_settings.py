import pytest
from pydantic import ValidationError

from affinage.core.settings import load_settings, resolve_home


def test_home_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("AFFINAGE_HOME", raising=False)
    assert str(resolve_home()) == ".affinage"
    monkeypatch.setenv("AFFINAGE_HOME", str(tmp_path / "env"))
    assert resolve_home() == tmp_path / "env"
    assert resolve_home(tmp_path / "flag") == tmp_path / "flag"


def test_env_beats_config_file_beats_defaults(monkeypatch, tmp_path):
    (tmp_path / "config.toml").write_text("top_k = 7\nmin_score = 0.5\n")
    monkeypatch.setenv("AFFINAGE_TOP_K", "9")
    settings = load_settings(tmp_path)
    assert (settings.top_k, settings.min_score, settings.max_new_tokens) == (9, 0.5, 128)
    assert settings.db_url == f"sqlite:///{tmp_path / 'affinage.db'}"
    assert load_settings(tmp_path, top_k=2).top_k == 2


def test_bad_values_are_named(tmp_path):
    (tmp_path / "config.toml").write_text('top_k = "many"\n')
    with pytest.raises(ValidationError, match="top_k"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("chunk_chars = 200\nchunk_overlap_chars = 300\n")
    with pytest.raises(ValidationError, match="chunk_overlap_chars"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("top_kk = 3\n")
    with pytest.raises(ValidationError, match="top_kk"):
        load_settings(tmp_path)


def test_a_malformed_allowed_link_domain_is_refused_by_name(tmp_path):
    (tmp_path / "config.toml").write_text('allowed_link_domains = ["docs.example.com", "https://evil.example/x"]\n')
    with pytest.raises(ValidationError, match=r"allowed_link_domains[\s\S]*'https://evil.example/x' is not a domain"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text('allowed_link_domains = ["Docs.Example.com", "*.python.org"]\n')
    assert load_settings(tmp_path).allowed_link_domains == ["docs.example.com", "*.python.org"]


def test_unset_allowed_link_domains_is_the_default_policy_and_an_empty_list_allows_no_links(tmp_path):
    assert load_settings(tmp_path).allowed_link_domains is None  # the knowledge base's own link hosts
    (tmp_path / "config.toml").write_text("allowed_link_domains = []\n")
    assert load_settings(tmp_path).allowed_link_domains == []


def test_batching_settings_that_cannot_work_are_refused_by_name(tmp_path):
    (tmp_path / "config.toml").write_text("max_batch_size = 0\n")
    with pytest.raises(ValidationError, match="max_batch_size"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("kv_cache_tokens = 300\nmax_new_tokens = 256\n")
    with pytest.raises(ValidationError, match=r"kv_cache_tokens \(300\) cannot hold one prompt and its answer"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("kv_cache_tokens = 4096\nmax_batch_size = 4\n")
    assert (load_settings(tmp_path).kv_cache_tokens, load_settings(tmp_path).max_batch_size) == (4096, 4)
