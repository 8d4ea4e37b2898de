"""Store and data commands: ``db``, ``simulate``, ``events import|export``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from conflictctl.context import AppContext, pass_app, progress_bar


def parse_utc(value: str | None) -> dt.datetime | None:
    """An ISO 8601 date or timestamp as aware UTC (a naive value is taken as UTC)."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"expected an ISO 8601 date or timestamp, got {value!r}") from exc
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


@click.group("db")
def db_group() -> None:
    """Schema migrations of the sync event store."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_app
def db_upgrade(app: AppContext, revision: str) -> None:
    """Create or migrate the store's tables."""
    from conflict_core import db

    db.upgrade(app.settings.database_url, revision)
    click.echo(f"store at revision {db.current_revision(app.settings.database_url)}")


@db_group.command("current")
@pass_app
def db_current(app: AppContext) -> None:
    """Print the store's schema revision."""
    from conflict_core import db

    click.echo(db.current_revision(app.settings.database_url) or "empty (run: conflictctl db upgrade)")


@click.command("simulate")
@click.option(
    "--profile",
    type=click.Choice(["fast", "slow"]),
    default="fast",
    show_default=True,
    help="sync tempo: fast (syncs minutes apart) or slow (syncs days apart, large multi-entity syncs, "
    "heavy-tailed team sizes)",
)
@click.option("--users", type=int, default=200, show_default=True)
@click.option("--entities", type=int, default=None, help="default: 10 per user (fast) or 1,000 per user (slow)")
@click.option("--days", type=int, default=90, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--end", "end", help="end of the simulated period (ISO 8601, UTC; default: today 00:00 UTC)")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the events to this Parquet file"
)
@click.option("--store/--no-store", default=True, show_default=True, help="write the events into the store")
@pass_app
def simulate_command(
    app: AppContext,
    profile: str,
    users: int,
    entities: int | None,
    days: int,
    seed: int,
    end: str | None,
    out: Path | None,
    store: bool,
) -> None:
    """Simulate sync history whose conflicts follow from stale bases and overlapping fields."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from conflict_core import db
    from conflict_core.events.store_writes import insert_event_frame
    from conflict_core.simulator import profile_config, simulate

    end_at = parse_utc(end) or dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = profile_config(
        profile, users=users, entities=entities, days=days, seed=seed, start=end_at - dt.timedelta(days=days)
    )
    with progress_bar(None, "simulating", "events") as bar:
        table = simulate(config, progress=lambda n: bar.update(n - bar.n))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    inserted = skipped = 0
    if store:
        db.upgrade(app.settings.database_url)
        with app.session_factory.begin() as session:
            inserted, skipped = insert_event_frame(session, table)
    rate = pc.mean(table["conflict"].cast("double")).as_py() or 0.0
    click.echo(
        f"simulated {table.num_rows:,} sync events ({profile} tempo) "
        f"from {config.start_at:%Y-%m-%d} to {config.end_at:%Y-%m-%d}, "
        f"conflict rate {rate:.2%}"
        + (f"; store: {inserted:,} inserted, {skipped:,} already there" if store else "")
        + (f"; written to {out}" if out else "")
    )


@click.group("events")
def events_group() -> None:
    """Import and export sync events."""


@events_group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chunk-rows", type=int, default=50_000, show_default=True)
@pass_app
def events_import(app: AppContext, paths: tuple[Path, ...], chunk_rows: int) -> None:
    """Import Parquet or CSV files in the import format; each file is all or nothing."""
    from conflict_core import db
    from conflict_core.events.store_writes import import_events

    db.upgrade(app.settings.database_url)
    for path in paths:
        with progress_bar(None, f"importing {path.name}") as bar:
            result = import_events(app.session_factory, path, chunk_rows=chunk_rows, progress=bar.update)
        click.echo(
            f"{path}: {result.rows_read:,} rows, {result.inserted:,} inserted, "
            f"{result.skipped_existing:,} already there"
        )


@events_group.command("export")
@click.option("--since", help="first day (ISO 8601, UTC)")
@click.option("--until", help="end, exclusive (ISO 8601, UTC)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="default: <data-dir>/events")
@pass_app
def events_export(app: AppContext, since: str | None, until: str | None, out: Path | None) -> None:
    """Write stored events as date-partitioned Parquet (date=YYYY-MM-DD/) for the Ray Data jobs."""
    from conflict_core.events.export import export_events

    out_dir = out or app.settings.events_dir
    with progress_bar(None, "exporting") as bar:
        result = export_events(app.engine, out_dir, since=parse_utc(since), until=parse_utc(until), progress=bar.update)
    click.echo(f"exported {result.rows:,} events into {len(result.partitions)} day partitions under {result.out_dir}")


COMMANDS = [db_group, simulate_command, events_group]
