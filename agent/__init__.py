"""The assistant: LangChain pipeline, chat models, example bank, interaction log, service."""
