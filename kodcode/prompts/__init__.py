"""Prompt templates: one Jinja2 file per prompt, versioned by the hash of its source.

A template defines a `system` block and a `user` block. A user directory given with `--prompts DIR`
overlays the packaged templates file by file, so one prompt can be changed without copying the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.meta

from kodcode.errors import ConfigError

__all__ = ["PromptLibrary", "RenderedPrompt", "STAGE_VARIABLES", "TEMPLATE_DIR", "TEMPLATE_NAMES"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAMES = (
    "propose_prefill",
    "propose_from_seeds",
    "propose_from_snippet",
    "propose_from_docs",
    "propose_evolve",
    "propose_free",
    "tag_question",
    "solve",
    "test_split",
    "test_signature",
    "solve_and_test_joint",
    "rewrite_complete",
)


# What each stage hands its template (the agents' render() calls), with a value of the right shape for a
# render probe. An overlay that uses anything else would render it as an error mid-run, after calls were
# paid for; it is refused when the library loads instead.
STAGE_VARIABLES: dict[str, dict[str, object]] = {
    "propose_prefill": {"prefix": "Write a python function"},
    "propose_from_seeds": {"seeds": ["Reverse a list.", "Sum a list."]},
    "propose_from_snippet": {"snippet": "def f(x):\n    return x\n"},
    "propose_from_docs": {"document": "f(x) returns x.", "api": "module.f"},
    "propose_evolve": {"question": "Reverse a list.", "method": "add a constraint"},
    "propose_free": {},
    "tag_question": {"question": "Reverse a list.", "categories": ["Algorithm", "Data Structure"]},
    "solve": {"question": "Write a function f.", "signature": "def f(x: int) -> int"},
    "test_split": {"question": "Write a function f.", "solution": "def f():\n    return 1", "entry_point": "f"},
    "test_signature": {"question": "Write a function f.", "entry_point": "f", "signature": "def f(x: int) -> int",
                       "docstring": "Return x."},
    "solve_and_test_joint": {"question": "Write a function f."},
    "rewrite_complete": {"question": "Write a function f.", "solution": "def f():\n    return 1",
                         "tests": "from solution import f\n\ndef test_f():\n    assert f() == 1",
                         "signature": "def f()"},
    "reason_answer": {"question": "Write a function f."},
}


@dataclass(frozen=True)
class RenderedPrompt:
    template: str          # template name, e.g. "solve"
    template_hash: str     # first 12 hex digits of sha256 of the template source
    system: str
    user: str

    def messages(self) -> tuple[dict[str, str], ...]:
        if self.system:
            return ({"role": "system", "content": self.system}, {"role": "user", "content": self.user})
        return ({"role": "user", "content": self.user},)


class PromptLibrary:
    def __init__(self, overlay_dir: Path | Sequence[Path] | None = None) -> None:
        """`overlay_dir`: a directory, or several (the first that has a template wins), over the packaged ones."""
        overlays = [overlay_dir] if isinstance(overlay_dir, Path) else list(overlay_dir or ())
        for folder in overlays:
            if not folder.is_dir():
                raise ConfigError(f"--prompts {folder}: not a directory")
        search = [*map(str, overlays), str(TEMPLATE_DIR)]
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self._cache: dict[str, tuple[jinja2.Template, str]] = {}

    def _load(self, name: str) -> tuple[jinja2.Template, str]:
        if name not in self._cache:
            try:
                source, _, _ = self._env.loader.get_source(self._env, f"{name}.j2")  # type: ignore[union-attr]
                template = self._env.get_template(f"{name}.j2")
            except jinja2.TemplateNotFound as exc:
                raise ConfigError(f"prompt template {name!r} not found") from exc
            except jinja2.TemplateSyntaxError as exc:
                raise ConfigError(f"prompt template {name}.j2 line {exc.lineno}: {exc.message}") from exc
            except UnicodeDecodeError:  # an overlay file saved in another encoding
                raise ConfigError(f"prompt template {name}.j2 is not UTF-8 text") from None
            digest = hashlib.sha256(source.encode()).hexdigest()[:12]
            self._check_variables(name, source)
            self._cache[name] = (template, digest)
        return self._cache[name]

    def _check_variables(self, name: str, source: str) -> None:
        """Refuse a template that uses a variable its stage does not provide, in any branch (a static look
        at the template, then a render with values of the stage's real shapes)."""
        provided = STAGE_VARIABLES.get(name)
        if provided is None:
            return
        where = self._env.loader.get_source(self._env, f"{name}.j2")[1]  # type: ignore[union-attr]
        unknown = sorted(jinja2.meta.find_undeclared_variables(self._env.parse(source))
                         - set(provided) - set(self._env.globals))
        if unknown:
            offer = ", ".join(sorted(provided)) or "none"
            raise ConfigError(f"prompt template {where} uses {', '.join(unknown)}, which the {name} stage does not "
                              f"provide (it provides: {offer})")

    def template_hash(self, name: str) -> str:
        return self._load(name)[1]

    def render(self, name: str, **variables: object) -> RenderedPrompt:
        template, digest = self._load(name)
        context = template.new_context(dict(variables))
        try:
            parts = {
                block: "".join(template.blocks[block](context)).strip() if block in template.blocks else ""
                for block in ("system", "user")
            }
        except jinja2.UndefinedError as exc:
            raise ConfigError(f"prompt template {name}.j2: {exc.message}") from exc
        if not parts["user"]:
            raise ConfigError(f"prompt template {name}.j2 has no `user` block")
        return RenderedPrompt(name, digest, parts["system"], parts["user"])

    def hashes(self) -> dict[str, str]:
        """Every template's hash; loading them all checks each one before anything is paid for."""
        for name in STAGE_VARIABLES:
            self.render(name, **STAGE_VARIABLES[name])    # the render probe: a template that cannot render fails here
        return {name: self.template_hash(name) for name in TEMPLATE_NAMES}
