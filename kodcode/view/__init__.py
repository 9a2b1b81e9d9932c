"""`python -m kodcode.view`: a local, read-only web page over a run's store, live while the run goes on.

Pages: the run (progress and charts), the items (filters, paging), one item (attempts side by side, verdicts,
gates, decisions, rewrites, reasoning samples, the LLM calls behind them, a diff of two attempts) and the
prompt versions. A command-line module: it reads the store and imports nothing of the pipeline."""

from kodcode.view.app import create_app

__all__ = ["create_app"]
