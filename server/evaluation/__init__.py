"""Evaluation: RM-selection strategies side by side on the same cached candidates."""
