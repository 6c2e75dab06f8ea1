"""Alembic migrations of the control plane's schema, and the function that applies them."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from config.datadir import private_sqlite

HERE = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """An Alembic config for this folder and the given database, without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database schema up to ``revision`` (a SQLite file is made private first)."""
    private_sqlite(database_url)
    command.upgrade(alembic_config(database_url), revision)
