"""Snippets (the paper's Algorithm and Data_Structure subsets): the model analyses a code snippet, then
writes a question that tests the concept it implements (genq_from_snippets). Snippets are top-level
functions and classes of a directory of Python files, cut out by AST; by default the Python standard
library's own sources, so the source works offline anywhere."""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.errors import ConfigError
from kodcode.messages import ProposeTask
from kodcode.parsing import ParseFailure, clean_question
from kodcode.agents.sources.base import ask

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["Snippet", "SnippetIndex", "SnippetSource", "default_snippets_dir"]

# Test suites, demos and third-party packages are not algorithm material.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                        "turtledemo", "venv", "ensurepip", ".git", ".venv", "node_modules"})
_RANDOM_TRIES = 24      # random files tried before walking the list in order


def default_snippets_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Snippet:
    path: str          # relative to the snippet directory
    qualname: str
    first_line: int
    last_line: int
    code: str

    @property
    def origin(self) -> str:
        return f"{self.path}::{self.qualname}"


def _has_control_flow(node: ast.AST) -> bool:
    """Algorithm material decides or repeats something; declarations (constants, struct layouts) do not."""
    return any(isinstance(child, (ast.For, ast.AsyncFor, ast.While, ast.If, ast.comprehension))
               for child in ast.walk(node))


class SnippetIndex:
    """The .py files of a directory (listed once, in a stable order) and their snippets (parsed on first
    use, so a pick touches one or two files, not the whole standard library)."""

    def __init__(self, root: Path, *, min_lines: int = 5, max_lines: int = 80) -> None:
        if not root.is_dir():
            raise ConfigError(f"sources.snippets_dir {root}: not a directory")
        self.root = root
        self.min_lines, self.max_lines = min_lines, max_lines
        self.files = sorted(
            (path for path in root.rglob("*.py")
             if not _SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]) and path.is_file()),
            key=lambda path: path.relative_to(root).as_posix())
        self._parsed: dict[Path, list[Snippet]] = {}
        if not self.files:
            raise ConfigError(f"sources.snippets_dir {root}: no Python files")
        if not any(self.snippets(path) for path in self.files):
            raise ConfigError(f"sources.snippets_dir {root}: no top-level function or class of "
                              f"{min_lines}-{max_lines} lines with a loop or a branch")

    def snippets(self, path: Path) -> list[Snippet]:
        if path not in self._parsed:
            self._parsed[path] = self._extract(path)
        return self._parsed[path]

    def _extract(self, path: Path) -> list[Snippet]:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            return []     # unreadable or not Python 3: not material, not an error
        lines = source.splitlines()
        relative = path.relative_to(self.root).as_posix()
        found = []
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("__") or node.end_lineno is None or not _has_control_flow(node):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = node.end_lineno - first + 1
            if not self.min_lines <= size <= self.max_lines:
                continue
            found.append(Snippet(relative, node.name, first, node.end_lineno,
                                 "\n".join(lines[first - 1:node.end_lineno])))
        return found

    def pick(self, rng: random.Random) -> Snippet:
        """A snippet chosen by `rng` alone: the same draws give the same snippet."""
        for _ in range(_RANDOM_TRIES):
            candidates = self.snippets(rng.choice(self.files))
            if candidates:
                return rng.choice(candidates)
        start = rng.randrange(len(self.files))
        for offset in range(len(self.files)):
            candidates = self.snippets(self.files[(start + offset) % len(self.files)])
            if candidates:
                return rng.choice(candidates)
        raise AssertionError("the index was checked to hold a snippet")   # pragma: no cover


class SnippetSource:
    name: ClassVar[str] = "snippets"

    def __init__(self, index: SnippetIndex, subset: str = "Algorithm") -> None:
        self.index = index
        self.subset = subset

    def task(self, seq: int, rng: random.Random) -> ProposeTask:
        snippet = self.index.pick(rng)
        return ProposeTask(item_id=f"{self.subset}_{seq}", seq=seq, source=self.name, subset=self.subset,
                           material=snippet.code,
                           origin=f"{snippet.origin}:{snippet.first_line}-{snippet.last_line}")

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        prompt = ctx.prompts.render("propose_from_snippet", snippet=task.material)
        request, response = await ask(ctx, prompt, task, min_tokens=ctx.config.sources.analysis_max_tokens)
        lineage["proposer"] = response.lineage(request)
        location, _, lines = task.origin.rpartition(":")
        path, _, qualname = location.partition("::")
        lineage["snippet"] = {"path": path, "qualname": qualname, "lines": lines}
        text = response.text
        if "<|Analysis Begin|>" in text and "<|Question Begin|>" not in text:
            raise ParseFailure("no <|Question Begin|> section after the analysis")
        return clean_question(text)
