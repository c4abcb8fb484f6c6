"""The HTTP layer: the FastAPI app factory and its routes; nothing below imports it.

- `app.py`: `build_app` (state set-up, error handlers, routers) and the lifespan.
- `routes.py`: the native routes (`/generate`, `/feedback`, `/health`, `/admin/*`, ...).
- `openai_routes.py`: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.
- `training_routes.py`: training jobs (`/v1/training/jobs`) and the served policy (`/v1/policy`).
- `generation.py`: the one generation handler every generation route calls.
- `auth.py`: the bearer-key check; `admission.py`: concurrency slots, queue, body limit.
"""
