"""``r2rank-serve``: run the HTTP service."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="r2rank ranking service.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        serve()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default R2RANK_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default R2RANK_PORT or 8000).")] = None,
    model_path: Annotated[Path | None, typer.Option(help="Checkpoint directory (default R2RANK_MODEL_PATH).")] = None,
) -> None:
    """Serve /rank with the configured engine. Settings come from R2RANK_* variables; flags override them."""
    import uvicorn

    from service.app import create_app
    from service.checkpoint import CheckpointError
    from service.config import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "model_path": model_path}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        application = create_app(settings)
    except CheckpointError as exc:
        typer.echo(f"r2rank-serve: cannot serve this checkpoint: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


@app.command("load-demo")
def load_demo(
    data: Annotated[Path | None, typer.Option(help="Demo directory (default: the shipped data/demo).")] = None,
    users: Annotated[int, typer.Option(help="How many demo users' histories to store.")] = 300,
    reset: Annotated[bool, typer.Option(help="Delete every key under R2RANK_REDIS_PREFIX first.")] = False,
) -> None:
    """Load the demo catalogue and user histories into Redis (R2RANK_REDIS_URL, R2RANK_REDIS_PREFIX)."""
    import asyncio

    from service.config import Settings
    from service.demo import DEMO_DIR, DemoData
    from service.state import build_store
    from service.store import StoreUnavailable

    settings = Settings()
    demo = DemoData(data or DEMO_DIR)
    store = build_store(settings)
    if store is None:
        raise typer.BadParameter("R2RANK_REDIS_URL is empty", param_hint="R2RANK_REDIS_URL")

    async def load() -> tuple[int, int]:
        try:
            if reset:
                await store.delete_prefix()
            n_items = await store.upsert_items({"item_id": k, "title": v} for k, v in demo.titles.items())
            chosen = demo.users[:users]
            for user in chosen:
                await store.replace_history(user.user_id, [(item, float(i)) for i, item in enumerate(user.history)])
            return n_items, len(chosen)
        finally:
            await store.close()

    try:
        n_items, n_users = asyncio.run(load())
    except StoreUnavailable as exc:
        typer.echo(f"r2rank-serve load-demo: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"loaded {n_items} items and {n_users} user histories under prefix {settings.redis_prefix!r}")


if __name__ == "__main__":
    app()
