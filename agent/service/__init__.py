"""The HTTP service: an OpenAI-compatible API, feedback, key management and the web chat page."""
