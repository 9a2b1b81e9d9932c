"""PromptLibrary: packaged templates, a user overlay directory, template hashes, and errors as ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from kodcode.errors import ConfigError
from kodcode.prompts import TEMPLATE_NAMES, PromptLibrary

OVERLAY_SOLVE = """{% block system %}Be brief.{% endblock %}
{% block user %}Solve: {{ question }}{% endblock %}
"""


def test_every_packaged_template_loads_and_has_a_distinct_hash() -> None:
    hashes = PromptLibrary().hashes()
    assert set(hashes) == set(TEMPLATE_NAMES)
    assert all(len(digest) == 12 and int(digest, 16) >= 0 for digest in hashes.values())
    assert len(set(hashes.values())) == len(TEMPLATE_NAMES)


def test_render_fills_the_system_and_user_blocks() -> None:
    library = PromptLibrary()
    prompt = library.render("solve", question="Write a function that adds two numbers.")
    assert prompt.template == "solve"
    assert prompt.template_hash == library.template_hash("solve")
    assert prompt.system and "Write a function that adds two numbers." in prompt.user
    assert prompt.messages() == ({"role": "system", "content": prompt.system},
                                 {"role": "user", "content": prompt.user})


def test_a_missing_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="solve.j2.*'question' is undefined"):
        PromptLibrary().render("solve")


def test_an_overlay_replaces_one_template_and_its_hash(tmp_path: Path) -> None:
    packaged = PromptLibrary()
    (tmp_path / "solve.j2").write_text(OVERLAY_SOLVE, encoding="utf-8")
    overlaid = PromptLibrary(tmp_path)
    prompt = overlaid.render("solve", question="add numbers")
    assert (prompt.system, prompt.user) == ("Be brief.", "Solve: add numbers")
    assert overlaid.template_hash("solve") != packaged.template_hash("solve")
    # Every other template still comes from the package, unchanged.
    assert {name: digest for name, digest in overlaid.hashes().items() if name != "solve"} == {
        name: digest for name, digest in packaged.hashes().items() if name != "solve"}


def test_a_template_without_a_system_block_sends_only_the_user_message(tmp_path: Path) -> None:
    (tmp_path / "solve.j2").write_text("{% block user %}Q: {{ question }}{% endblock %}", encoding="utf-8")
    prompt = PromptLibrary(tmp_path).render("solve", question="x")
    assert prompt.messages() == ({"role": "user", "content": "Q: x"},)


def test_a_template_without_a_user_block_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "solve.j2").write_text("{% block system %}S{% endblock %}", encoding="utf-8")
    with pytest.raises(ConfigError, match="solve.j2 has no `user` block"):
        PromptLibrary(tmp_path).render("solve", question="x")


def test_a_missing_overlay_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        PromptLibrary(tmp_path / "nope")


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "test_split.j2").write_text("{% block user %}\nTests for {{ entry_point }\n{% endblock %}",
                                            encoding="utf-8")
    library = PromptLibrary(tmp_path)  # loading is lazy: other templates still work
    assert library.render("solve", question="q").user
    with pytest.raises(ConfigError, match=r"test_split\.j2 line 2") as caught:
        library.render("test_split", entry_point="f", question="q", solution="s")
    assert "\n" not in str(caught.value)


def test_an_unknown_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'rewrite_instruct' not found"):
        PromptLibrary().render("rewrite_instruct", question="q")


def test_a_template_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "solve.j2").write_bytes("{% block user %}caf\u00e9 {{ question }}{% endblock %}".encode("latin-1"))
    with pytest.raises(ConfigError, match="solve.j2"):
        PromptLibrary(tmp_path).render("solve", question="q")
