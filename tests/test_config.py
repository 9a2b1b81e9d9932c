"""load_config: a TOML file overlaid by flags; every mistake is a one-line ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kodcode.config import Config, load_config
from kodcode.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kodcode.toml"
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(path: Path | None, overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.effective_mode == "split"  # no base_url: the embedded model, split mode
    assert config.role("solver").temperature == 0.3


def test_file_values_and_overrides_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, """
target = 50
concurrency = 4
base_url = "http://127.0.0.1:8000/v1"

[sandbox]
workers = 2
timeout_s = 5.0

[roles.solver]
model = "coder"
temperature = 0.1
""")
    config = load_config(path, {"target": 7, "concurrency": None, "sandbox.workers": 3, "seed": 11})
    assert config.target == 7                 # the flag wins over the file
    assert config.concurrency == 4            # a flag left unset (None) keeps the file's value
    assert config.sandbox.workers == 3        # dotted override of a nested key
    assert config.sandbox.timeout_s == 5.0    # ...leaves its siblings from the file alone
    assert config.seed == 11
    assert config.role("solver").model == "coder"
    assert config.role("solver").temperature == 0.1
    assert config.role("tester").temperature == 0.3   # roles not in the file keep the defaults
    assert config.effective_mode == "joint"


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, "targett = 5\n"), {})
    assert message == "unknown config key 'targett'"


def test_unknown_nested_key_is_named(tmp_path: Path) -> None:
    assert one_line_error(write(tmp_path, "[sandbox]\nworker = 2\n"), {}) == "unknown config key 'sandbox.worker'"
    assert "roles.solver.temprature" in one_line_error(
        write(tmp_path, "[roles.solver]\ntemprature = 0.2\n"), {})
    assert "sources.weight" in one_line_error(None, {"sources.weight": {"seeds": 1.0}})


def test_unknown_role_is_an_error(tmp_path: Path) -> None:
    assert "roles.solvr" in one_line_error(write(tmp_path, "[roles.solvr]\nmodel = 'x'\n"), {})


def test_wrong_types_and_ranges_name_the_key(tmp_path: Path) -> None:
    message = one_line_error(write(tmp_path, 'target = "ten"\n'), {})
    assert message.startswith("config key 'target':")
    assert "integer" in message
    assert one_line_error(None, {"sandbox.timeout_s": -1}).startswith("config key 'sandbox.timeout_s':")
    assert one_line_error(None, {"mode": "both"}).startswith("config key 'mode':")


def test_all_source_weights_zero_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[sources.weights]\nprefill = 0.0\nseeds = 0.0\n")
    assert "at least one source" in one_line_error(path, {})


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert one_line_error(missing, {}) == f"config file {missing} does not exist"

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('model = "caf\u00e9"\n'.encode("latin-1"))
    assert "is not UTF-8" in one_line_error(latin1, {})

    broken = write(tmp_path, "target = \n")
    assert "is not valid TOML" in one_line_error(broken, {})

    assert str(tmp_path) in one_line_error(tmp_path, {})  # a directory, not a file


def test_override_into_a_section_the_file_set_to_a_scalar(tmp_path: Path) -> None:
    path = write(tmp_path, "sandbox = 3\n")
    assert "sandbox" in one_line_error(path, {"sandbox.workers": 2})


def test_the_small_models_token_limits_follow_the_model_not_the_backend(tmp_path: Path) -> None:
    embedded = load_config(None, {})
    converted = load_config(None, {"backend": "vllm"})
    other = load_config(None, {"backend": "vllm", "vllm.model_dir": tmp_path})
    served = load_config(None, {"base_url": "http://127.0.0.1:8000/v1"})
    for config in (embedded, converted):
        assert (config.role("solver").max_tokens, config.role("tester").max_tokens) == (768, 512)
    for config in (other, served):
        assert config.role("tester").max_tokens > 512
    user = load_config(None, {"backend": "vllm", "roles.tester.max_tokens": 900})
    assert user.role("tester").max_tokens == 900
