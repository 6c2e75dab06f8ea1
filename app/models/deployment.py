"""Deployments and their services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UTCDateTime, utcnow
from config.deployment import load_deployment_mapping


class Deployment(Base):
    """A named set of services, as defined by one YAML file."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    #: The parsed spec (``DeploymentSpec.to_dict()``), which workers load.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The file as uploaded, kept for reference and download.
    source_yaml: Mapped[str] = mapped_column(Text)
    #: The folder local sources are relative to (on the hosts that run the services).
    base_path: Mapped[str] = mapped_column(Text)
    #: Bumped on every reload, so workers can tell a stale spec.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    services: Mapped[list[Service]] = relationship(
        back_populates="deployment",
        cascade="all, delete-orphan",
        order_by="Service.id",
    )

    @property
    def default_service(self) -> str | None:
        """The service used when a task names none."""
        return self.spec.get("default-service")

    @property
    def warnings(self) -> list[str]:
        """What its file holds that is accepted but does nothing."""
        return load_deployment_mapping(self.spec).warnings


class Service(Base):
    """One workflow of a deployment, served from its own queue."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    #: The service id: its key under ``services:`` in the YAML.
    name: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(450))
    #: What a worker reported of the workflow (event schemas, graph) or its load error.
    description: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: The deployment version ``description`` belongs to.
    described_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    deployment: Mapped[Deployment] = relationship(back_populates="services")


class DeploymentVersion(Base):
    """An earlier version of a deployment, kept while a durable task that started on it has
    not ended: the task resumes on it, not on the deployment's current version (see
    ``app.control.versions``)."""

    __tablename__ = "deployment_versions"
    __table_args__ = (PrimaryKeyConstraint("deployment_id", "version"),)

    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer, autoincrement=False)
    #: The parsed spec of that version (``Deployment.spec`` as it was).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Its base path (``Deployment.base_path`` as it was).
    base_path: Mapped[str] = mapped_column(Text)
    #: Its services' descriptions, by service, as workers reported them for that version (to
    #: check the events sent into its tasks); a service never described is absent.
    descriptions: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: When the reload that replaced it kept it.
    kept_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
