"""Docs (the paper's Docs subset): a question that needs a library's documented API (genq_from_docs).
Documents are the docstrings of installed modules' public functions and classes, read with inspect, so
the source works offline; the model may refuse a useless document with BAD_DOCUMENT, and such items are
dropped with that reason."""

from __future__ import annotations

import importlib
import inspect
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from kodcode.errors import ConfigError
from kodcode.messages import ProposeTask
from kodcode.parsing import clean_question
from kodcode.agents.sources.base import ask

if TYPE_CHECKING:
    from kodcode.agents.context import AgentContext

__all__ = ["DEFAULT_DOC_MODULES", "DocIndex", "DocSource", "Document"]

DEFAULT_DOC_MODULES = ("json", "itertools", "collections", "re", "datetime", "textwrap")
_MIN_DOC_CHARS = 80        # one-line docstrings say too little to build a question on
_MAX_DOC_CHARS = 4000      # keeps the prompt small; the head of a docstring carries its contract
_MAX_METHODS = 12


@dataclass(frozen=True)
class Document:
    name: str          # e.g. "json.dumps"
    text: str


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [name for name in dir(module) if not name.startswith("_")]
    return sorted(str(name) for name in names)


def _describe(module_name: str, name: str, obj: Any) -> Document | None:
    doc = inspect.getdoc(obj)
    if not doc or len(doc) < _MIN_DOC_CHARS:
        return None
    qualified = f"{module_name}.{name}"
    parts = [f"{qualified}{_signature(obj)}", "", doc]
    if inspect.isclass(obj):
        methods = []
        for method_name, method in sorted(vars(obj).items()):
            if method_name.startswith("_") or not callable(method):
                continue
            summary = (inspect.getdoc(method) or "").split("\n\n")[0].replace("\n", " ")
            methods.append(f"- {method_name}{_signature(method)}: {summary}".rstrip(": "))
        if methods:
            parts += ["", "Methods:", *methods[:_MAX_METHODS]]
    text = "\n".join(parts)
    if len(text) > _MAX_DOC_CHARS:
        text = text[:_MAX_DOC_CHARS].rsplit("\n", 1)[0]
    return Document(qualified, text)


class DocIndex:
    """Public functions and classes with a substantial docstring, from the named modules, sorted by name."""

    def __init__(self, modules: tuple[str, ...] = DEFAULT_DOC_MODULES) -> None:
        if not modules:
            raise ConfigError("sources.docs_modules is empty: name at least one module")
        documents: dict[str, Document] = {}
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:   # ImportError, or whatever a broken package raises on import
                raise ConfigError(f"sources.docs_modules: cannot import {module_name!r} "
                                  f"({type(exc).__name__}: {exc})") from None
            for name in _public_names(module):
                obj = getattr(module, name, None)
                if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                    continue
                document = _describe(module_name, name, obj)
                if document is not None:
                    documents.setdefault(document.name, document)
        if not documents:
            raise ConfigError(f"sources.docs_modules: no documented public function or class in {', '.join(modules)}")
        self.documents = sorted(documents.values(), key=lambda document: document.name)

    def pick(self, rng: random.Random) -> Document:
        return rng.choice(self.documents)


class DocSource:
    name: ClassVar[str] = "docs"

    def __init__(self, index: DocIndex) -> None:
        self.index = index

    def task(self, seq: int, rng: random.Random) -> ProposeTask:
        document = self.index.pick(rng)
        return ProposeTask(item_id=f"Docs_{seq}", seq=seq, source=self.name, subset="Docs",
                           material=document.text, origin=document.name)

    @classmethod
    async def propose(cls, ctx: AgentContext, task: ProposeTask, lineage: dict[str, Any]) -> str:
        prompt = ctx.prompts.render("propose_from_docs", document=task.material, api=task.origin)
        request, response = await ask(ctx, prompt, task, min_tokens=ctx.config.sources.analysis_max_tokens)
        lineage["proposer"] = response.lineage(request)
        lineage["document"] = task.origin
        return clean_question(response.text)   # raises on BAD_DOCUMENT with that reason
