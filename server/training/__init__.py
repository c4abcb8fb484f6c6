"""Training: the paper's iterative DPO loop with a bandit-chosen RM per batch."""
