"""Prompts: chat rendering and parsing, tokenizing, and model-specific prompt rules."""
