"""The kinds of query the bandit tells apart (the `kind` context's one-hot order), in a module
of their own so that the featurizer, priors and the configuration can all name them."""

KINDS = ("math", "mc", "qa", "general")
