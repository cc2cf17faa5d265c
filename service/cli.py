"""``r2rank-serve``: run the HTTP service."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="r2rank ranking service.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        serve()


def _exit_after_drain(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default R2RANK_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default R2RANK_PORT or 8000).")] = None,
    model_path: Annotated[Path | None, typer.Option(help="Checkpoint directory (default R2RANK_MODEL_PATH).")] = None,
) -> None:
    """Serve /rank with the configured engine. Settings come from R2RANK_* variables; flags override them."""
    import uvicorn

    from contract.checkpoint import CheckpointError
    from service.app import create_app
    from service.config import Settings
    from service.logs import configure_logging

    overrides = {k: v for k, v in {"host": host, "port": port, "model_path": model_path}.items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    try:
        application = create_app(settings)
    except CheckpointError as exc:
        typer.echo(f"r2rank-serve: cannot serve this checkpoint: {exc}", err=True)
        raise typer.Exit(2) from exc
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal to the handler that was installed
    # before it; this one turns that into a clean exit 0 (the drain is done by then).
    signal.signal(signal.SIGTERM, _exit_after_drain)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep configure_logging's JSON handler
        access_log=False,  # the app writes its own access line, with the request id
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


@app.command("load-demo")
def load_demo(
    data: Annotated[Path | None, typer.Option(help="Demo directory (default: the shipped data/demo).")] = None,
    users: Annotated[int, typer.Option(help="How many demo users' histories to store.")] = 300,
    reset: Annotated[bool, typer.Option(help="Delete every key under R2RANK_REDIS_PREFIX first.")] = False,
    if_empty: Annotated[bool, typer.Option(help="Do nothing when the catalogue already has items.")] = False,
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
            if if_empty and await store.count_items() > 0:
                return 0, 0
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


@app.command("load")
def load_cmd(
    data: Annotated[
        Path, typer.Argument(help="A directory with items.jsonl and/or interactions.jsonl (docs/data.md).")
    ],
    concurrency: Annotated[int, typer.Option(min=1, max=512, help="Histories written at a time.")] = 32,
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Load a catalogue and its users' histories into Redis (R2RANK_REDIS_URL, R2RANK_REDIS_PREFIX): the files
    `make train DATA=DIR` trained on, read the same way. Idempotent (rerun after an interruption or a fix);
    rows the API would refuse are refused with their line and the rest load."""
    import asyncio

    from service.bulk_load import load_directory
    from service.config import Settings
    from service.state import build_store
    from service.store import StoreUnavailable

    settings = Settings()
    store = build_store(settings)
    if store is None:
        raise typer.BadParameter("R2RANK_REDIS_URL is empty", param_hint="R2RANK_REDIS_URL")

    async def run():
        try:
            return await load_directory(store, data, concurrency, quiet)
        finally:
            await store.close()

    try:
        report = asyncio.run(run())
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="DATA") from exc
    except StoreUnavailable as exc:
        typer.echo(f"r2rank-serve load: {exc} (rerun to continue: the load is idempotent)", err=True)
        raise typer.Exit(1) from exc
    typer.echo(report.render())
    typer.echo(f"under prefix {settings.redis_prefix!r}")


keys_app = typer.Typer(help="API keys in Redis: add, list, revoke (signed with R2RANK_KEY_SECRET).")
app.add_typer(keys_app, name="keys")


def _key_store():
    from service.auth import KeyStore
    from service.config import Settings
    from service.state import build_store

    settings = Settings()
    store = build_store(settings)
    if store is None:
        raise typer.BadParameter("R2RANK_REDIS_URL is empty", param_hint="R2RANK_REDIS_URL")
    if settings.key_secret is None:
        raise typer.BadParameter("set R2RANK_KEY_SECRET: keys in Redis are signed with it, and only signed ones are "
                                 "honoured", param_hint="R2RANK_KEY_SECRET")  # fmt: skip
    return KeyStore({}, store, settings.key_secret.get_secret_value()), store


def _run_on_keys(work):
    import asyncio

    keys, store = _key_store()

    async def run():
        try:
            return await work(keys)
        finally:
            await store.close()

    return asyncio.run(run())


@keys_app.command("add")
def keys_add(
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes: rank, ingest, admin.")] = "rank",
    name: Annotated[str | None, typer.Option(help="Who the key is for (shown by `keys list`).")] = None,
    requests_per_s: Annotated[float | None, typer.Option(help="Most requests per second (default: no limit).")] = None,
    items_per_s: Annotated[
        float | None, typer.Option(help="Most candidate items per second (default: no limit).")
    ] = None,
) -> None:
    """Create an API key, store its signed hash in Redis and print the key once."""
    from service.auth import SCOPES

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown or not wanted:
        raise typer.BadParameter(f"scopes must be among {list(SCOPES)}, got {wanted}", param_hint="--scopes")
    for value, hint in ((requests_per_s, "--requests-per-s"), (items_per_s, "--items-per-s")):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"a rate must be > 0, got {value}", param_hint=hint)
    typer.echo(_run_on_keys(lambda keys: keys.add(wanted, name, requests_per_s, items_per_s)))


@keys_app.command("list")
def keys_list() -> None:
    """The keys in Redis: digest prefix, scopes, rates, name, created; an entry that fails its signature check
    (written without the secret) is listed as FORGED and is not honoured."""
    import datetime

    entries = _run_on_keys(lambda keys: keys.list())
    for digest, entry in sorted(entries.items()):
        if entry is None:
            typer.echo(f"{digest[:12]}  FORGED (not honoured)")
            continue
        created = datetime.datetime.fromtimestamp(entry.created, datetime.timezone.utc).isoformat(timespec="seconds")
        rates = f"{entry.requests_per_s or '-'} req/s, {entry.items_per_s or '-'} items/s"
        typer.echo(f"{digest[:12]}  {','.join(sorted(entry.scopes)):10s} {rates:24s} {entry.name or '-':20s} {created}")


@keys_app.command("revoke")
def keys_revoke(
    digest: Annotated[str, typer.Argument(help="The key's sha256, or its first 8+ characters (`keys list`).")],
) -> None:
    """Delete a key from Redis: it is refused from the next request on."""
    try:
        revoked = _run_on_keys(lambda keys: keys.revoke(digest))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="DIGEST") from exc
    if not revoked:
        typer.echo(f"no key starts with {digest}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {', '.join(d[:12] for d in revoked)}")


@app.command("add-key")
def add_key(
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes: rank, ingest, admin.")] = "rank",
) -> None:
    """Create an API key (the same as `keys add`)."""
    keys_add(scopes=scopes, name=None, requests_per_s=None, items_per_s=None)


@app.command("openapi")
def openapi_cmd(
    out: Annotated[Path | None, typer.Option(help="Write the schema here (default: print it).")] = None,
) -> None:
    """The API's OpenAPI schema as the service serves it at /openapi.json (docs/openapi.json is this output)."""
    import json

    from service.app import create_app
    from service.config import Settings

    schema = create_app(Settings(redis_url=None)).openapi()
    text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


@app.command("hash-key")
def hash_key_cmd(
    key: Annotated[str | None, typer.Argument(help="A key; a new one is generated if omitted.")] = None,
) -> None:
    """Print a key and its sha256, for R2RANK_API_KEYS='{"<sha256>": ["rank"]}'."""
    from service.auth import hash_key, new_key

    key = key or new_key()
    typer.echo(f"key:    {key}\nsha256: {hash_key(key)}")


if __name__ == "__main__":
    app()
