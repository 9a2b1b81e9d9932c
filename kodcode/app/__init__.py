"""The composition root: builds a run (store, LLM, sandbox, agents, progress) from a config."""
