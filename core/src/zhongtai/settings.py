"""Settings: environment variables ``ZHONGTAI_*`` and an optional TOML file.

Sources, highest priority first: values passed in code, environment variables,
the TOML file (``ZHONGTAI_CONFIG``, else ``$ZHONGTAI_HOME/zhongtai.toml`` when it
exists), then defaults. Plugins declare their own settings model with the
``register_settings`` hook; it is read from the same sources under the plugin's
prefix: ``ZHONGTAI_<PLUGIN>__<FIELD>`` and the TOML table ``[<plugin>]``.

Every value is validated at start-up; :class:`SettingsError` carries one line per
problem so the CLI can print them and exit non-zero without a traceback.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "ZHONGTAI_"
SUPPORTED_DATABASES = ("sqlite", "postgresql")


class SettingsError(Exception):
    """Invalid configuration. ``problems`` holds one readable line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _default_home() -> Path:
    return Path(os.environ.get("ZHONGTAI_HOME") or Path.home() / ".zhongtai").expanduser()


def config_file_path(home: Path | None = None) -> Path | None:
    """The TOML file to read, or None when there is none."""
    explicit = os.environ.get("ZHONGTAI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    candidate = (home or _default_home()) / "zhongtai.toml"
    return candidate if candidate.is_file() else None


def read_config_file(home: Path | None = None) -> dict[str, Any]:
    """Parse the TOML file (empty dict when there is none)."""
    path = config_file_path(home)
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError([f"ZHONGTAI_CONFIG: file not found: {path}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{path}: invalid TOML: {exc}"]) from None


class _TomlSection(PydanticBaseSettingsSource):
    """A settings source that reads one table (or the top level) of the TOML file."""

    def __init__(self, settings_cls: type[BaseSettings], section: str | None) -> None:
        super().__init__(settings_cls)
        self.section = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is used instead

    def __call__(self) -> dict[str, Any]:
        data = read_config_file()
        if self.section is not None:
            value = data.get(self.section, {})
            return value if isinstance(value, dict) else {}
        fields = self.settings_cls.model_fields
        return {k: v for k, v in data.items() if k in fields}


class StorageSettings(BaseModel):
    """Object store: ``ZHONGTAI_STORAGE__DRIVER`` and the driver's options."""

    model_config = {"extra": "allow"}  # third-party drivers read their own keys

    driver: str = "local"
    root: Path | None = None
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"


class IdentitySettings(BaseModel):
    """Sign-in and accounts: ``ZHONGTAI_IDENTITY__<FIELD>``, TOML table ``[identity]``."""

    model_config = {"extra": "forbid"}

    registration: Literal["open", "invite", "off"] = Field(
        default="off",
        description="Self-registration: anyone (open), with an invitation (invite), or not at all.",
    )
    password_min_length: int = Field(default=10, ge=8, le=128)
    access_token_ttl: int = Field(
        default=900, ge=60, le=86_400, description="Access token lifetime, seconds."
    )
    refresh_token_ttl: int = Field(
        default=30 * 86_400,
        ge=3600,
        le=365 * 86_400,
        description="Refresh token lifetime, seconds.",
    )
    invitation_ttl: int = Field(
        default=7 * 86_400, ge=3600, le=90 * 86_400, description="Invitation lifetime, seconds."
    )
    login_max_failures: int = Field(
        default=5, ge=1, le=1000, description="Failed logins per account or address before a lock."
    )
    login_window: int = Field(
        default=900, ge=1, description="Seconds over which failed logins are counted."
    )
    login_lockout: int = Field(default=900, ge=1, description="Seconds a lock lasts.")
    session_ttl: int = Field(
        default=14 * 86400,
        ge=60,
        description="Seconds a web UI sign-in lasts (the browser's session cookie).",
    )
    cache: bool = Field(
        default=True,
        description=(
            "Keep who a credential is and the projects a caller sees in memory until "
            "the next write to the identity tables (always as fresh as the database)."
        ),
    )


class JobsSettings(BaseModel):
    """The work engine: ``ZHONGTAI_JOBS__<FIELD>``, TOML table ``[jobs]``."""

    model_config = {"extra": "forbid"}

    queue: str = Field(
        default="embedded",
        description="Queue driver (entry point in zhongtai.queue): embedded or rq.",
    )
    workers: int = Field(
        default=4, ge=1, le=256, description="Worker threads of the embedded queue."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for the rq queue driver."
    )
    queue_prefix: str = Field(
        default="zt",
        pattern=r"^[a-z0-9_-]{1,32}$",
        description="Prefix of the RQ queue names and Redis channels (one per platform).",
    )
    max_running_per_project: int = Field(
        default=8,
        ge=1,
        le=100_000,
        description="Jobs of one project that may run at once; more wait as 'held'.",
    )
    max_pending_per_project: int = Field(
        default=10_000,
        ge=1,
        description="Jobs of one project that may wait (queued, held, scheduled); more → 429.",
    )
    submissions_per_second: int = Field(
        default=100,
        ge=0,
        description="Job submissions one caller (API key or token) may make per second on "
        "one server process; more → 429 with Retry-After (0: no limit).",
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between a worker's heartbeats."
    )
    stale_after: float = Field(
        default=60.0,
        gt=0,
        description="Seconds without a heartbeat after which a running job is abandoned.",
    )
    reconcile_interval: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between reconciler runs (processes sharing a Redis take turns).",
    )
    poll_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between an idle process's looks for scheduled jobs that came "
        "due; the jobs a process scheduled itself it queues on time.",
    )


class WebhooksSettings(BaseModel):
    """Outbound webhooks: ``ZHONGTAI_WEBHOOKS__<FIELD>``, TOML table ``[webhooks]``."""

    model_config = {"extra": "forbid"}

    allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated CIDR networks webhooks may reach although they are private "
            "(e.g. 10.0.0.0/8); loopback, private, link-local and metadata addresses are "
            "refused otherwise."
        ),
    )
    timeout: float = Field(default=10.0, gt=0, le=60, description="Seconds per delivery attempt.")

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network in CIDR notation") from None
        return value


class Settings(BaseSettings):
    """The core's settings. Field ``x`` is read from ``ZHONGTAI_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    home: Path = Field(default_factory=_default_home, description="Data directory.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite under the data directory.",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Signing key; generated into the data directory if unset."
    )
    plugins: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Comma-separated plugins to load (default: all installed)."
    )
    disable_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated plugins not to load."
    )
    strict_plugins: bool = Field(
        default=False, description="Fail start-up when any plugin cannot load (for CI)."
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    access_log: bool = True
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are trusted (default: none; the socket address is the client).",
    )
    max_body_size: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_page_size: int = Field(default=500, ge=1, le=10_000)
    default_page_size: int = Field(default=50, ge=1)
    public_url: str | None = Field(
        default=None,
        description="The URL users reach the platform at (links printed and mailed); "
        "default: http://HOST:PORT.",
    )
    identity: IdentitySettings = Field(default_factory=lambda: IdentitySettings())
    jobs: JobsSettings = Field(default_factory=lambda: JobsSettings())
    webhooks: WebhooksSettings = Field(default_factory=lambda: WebhooksSettings())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSection(settings_cls, None)

    @field_validator("plugins", "disable_plugins", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",")]
            return [name for name in names if name]
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("database_url", mode="after")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (expected sqlite:///PATH or postgresql://…)"
            ) from None
        backend = url.get_backend_name()
        if backend not in SUPPORTED_DATABASES:
            raise ValueError(
                f"unsupported database {backend!r}; use one of {', '.join(SUPPORTED_DATABASES)}"
            )
        return value

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'zhongtai.db'}"

    @property
    def is_embedded_database(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def ensure_home(self) -> None:
        """Create the data directory (private to the user) if it does not exist."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def base_url(self) -> str:
        """Where users reach the platform: ``public_url`` or ``http://host:port``."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def resolved_secret_key(self) -> str:
        """The configured secret key, or one generated into the data directory on first use."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        self.ensure_home()
        path = self.home / "secret_key"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        key = secrets.token_urlsafe(48)
        # O_EXCL: when two processes start at once, one writes and both read the same key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


class PluginSettings(BaseSettings):
    """Base class for a plugin's settings model (returned by ``register_settings``).

    Fields are read from ``ZHONGTAI_<PLUGIN>__<FIELD>`` and the TOML table
    ``[<plugin>]``. Declare secrets as ``SecretStr`` so listings mask them.
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")
    _zt_section: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        section = settings_cls.model_config.get("title")
        return init_settings, env_settings, _TomlSection(settings_cls, section)


def env_prefix_for(plugin: str) -> str:
    return f"{ENV_PREFIX}{plugin.upper()}__"


def load_plugin_settings(plugin: str, model: type[PluginSettings]) -> PluginSettings:
    """Read and validate one plugin's settings under its prefix.

    Raises:
        SettingsError: naming each bad variable, e.g. ``ZHONGTAI_TRAIN__BACKEND: …``.
    """
    if not (isinstance(model, type) and issubclass(model, PluginSettings)):
        raise SettingsError([f"plugin {plugin}: register_settings must return a PluginSettings"])
    bound = type(
        model.__name__,
        (model,),
        {
            "model_config": SettingsConfigDict(
                **{**model.model_config, "env_prefix": env_prefix_for(plugin), "title": plugin}
            ),
            "__module__": model.__module__,
        },
    )
    prefix = env_prefix_for(plugin)
    fields = {name.upper() for name in model.model_fields}
    # pydantic-settings ignores variables it has no field for; a typo must not pass silently.
    unknown = [
        key
        for key in os.environ
        if key.startswith(prefix) and key[len(prefix) :].split("__", 1)[0] not in fields
    ]
    if unknown:
        known = ", ".join(sorted(prefix + f for f in fields)) or "none"
        raise SettingsError([f"{key}: unknown setting (known: {known})" for key in sorted(unknown)])
    try:
        return bound()  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise SettingsError(_describe(exc, prefix)) from None


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the core settings.

    Raises:
        SettingsError: one line per bad value, naming the environment variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, ENV_PREFIX)) from None


def _describe(exc: ValidationError, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors():
        name = prefix + "__".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return problems


def masked(model: BaseModel, prefix: str) -> dict[str, str]:
    """Flatten settings to ``{ENV_NAME: value}`` with secrets and URL passwords masked."""
    out: dict[str, str] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, BaseModel):
            for key in type(value).model_fields:
                walk(getattr(value, key), f"{name}__{key.upper()}" if name else key.upper())
            for key, extra in (value.model_extra or {}).items():
                walk(extra, f"{name}__{key.upper()}")
            return
        if isinstance(value, SecretStr):
            out[prefix + name] = "********" if value.get_secret_value() else ""
        elif value is None:
            out[prefix + name] = ""
        elif isinstance(value, list):
            out[prefix + name] = ",".join(map(str, value))
        else:
            out[prefix + name] = mask_url_password(str(value))

    walk(model, "")
    return out


def mask_url_password(text: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL."""
    if "://" not in text or "@" not in text:
        return text
    scheme, rest = text.split("://", 1)
    creds, sep, host = rest.partition("@")
    if ":" in creds and sep and "/" not in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:********@{host}"
    return text
