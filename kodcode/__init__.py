"""kodcode: verified coding training data made by concurrent LLM agents."""

__version__ = "0.1.0"
