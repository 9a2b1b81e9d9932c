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

from kodcode.errors import ConfigError

__all__ = ["PromptLibrary", "RenderedPrompt", "TEMPLATE_DIR", "TEMPLATE_NAMES"]

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
            self._cache[name] = (template, digest)
        return self._cache[name]

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
        return {name: self.template_hash(name) for name in TEMPLATE_NAMES}
