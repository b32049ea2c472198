"""fedpers: federated, privacy-preserving personalization for LLM assistants."""

__version__ = "0.1.0"
