"""Thin bridges from optical-memory to LangChain, OpenAI-style backends and transformers."""
