"""Placeholder: the gateway runner (owned by the lead; being written)."""
