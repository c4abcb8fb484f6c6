"""laser.server: the FastAPI app, reranking pipeline, engines, reward models, training."""
