"""The embedded model: its files on PyPI, the llama.cpp runtime that serves it, conversion for vLLM, and process lifetime."""
