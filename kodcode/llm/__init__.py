"""LLM access: the request/response types and transport port, the OpenAI-compatible client, endpoint pools, in-process vLLM, budgets, prices and a scripted fake."""
