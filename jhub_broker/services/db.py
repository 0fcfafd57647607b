"""The service's state in SQLAlchemy: environments, builds and the actions history.

SQLite by default; any SQLAlchemy URL works (PostgreSQL is tested).
"""
import datetime
import json
from typing import Optional

from sqlalchemy import ForeignKey, Integer, String, Text, DateTime, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Environment(Base):
    __tablename__ = "broker_environments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(128))
    python: Mapped[str] = mapped_column(String(16))
    requirements_json: Mapped[str] = mapped_column(Text, default="[]")
    current_build_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    builds: Mapped[list["Build"]] = relationship(back_populates="environment", cascade="all, delete-orphan",
                                                 order_by="Build.number")

    @property
    def requirements(self):
        return json.loads(self.requirements_json or "[]")

    @requirements.setter
    def requirements(self, value):
        self.requirements_json = json.dumps(list(value))


class Build(Base):
    __tablename__ = "broker_builds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("broker_environments.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    # queued, building, testing, published, failed, retired (dir removed by retention)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str] = mapped_column(String(200), default="")
    requirements_json: Mapped[str] = mapped_column(Text, default="[]")
    lockfile: Mapped[str] = mapped_column(Text, default="")
    installer: Mapped[str] = mapped_column(String(16), default="")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[Optional[datetime.datetime]] = mapped_column(DateTime, nullable=True)
    environment: Mapped[Environment] = relationship(back_populates="builds")

    @property
    def requirements(self):
        return json.loads(self.requirements_json or "[]")


class Action(Base):
    __tablename__ = "broker_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    # running, ok, failed
    result: Mapped[str] = mapped_column(String(16), default="running")
    build_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[Optional[datetime.datetime]] = mapped_column(DateTime, nullable=True)


class AuthSetting(Base):
    """One live authentication setting (JSON value), read by the hub's authenticator at every login."""
    __tablename__ = "broker_auth_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_json: Mapped[str] = mapped_column(Text, default="null")
    updated_by: Mapped[str] = mapped_column(String(255), default="")
    updated: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


def make_session_factory(url, echo=False):
    """Create tables if needed and return a session factory for ``url``."""
    if "://" not in url:
        url = "sqlite:///" + url
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = create_engine(url, echo=echo, future=True, **kwargs)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def env_by_name(session, name):
    return session.scalars(select(Environment).where(Environment.name == name)).first()
