"""Named backends ("drivers") chosen by configuration, loaded with stevedore.

Each namespace (``zhongtai.storage``, ``zhongtai.queue``, ``zhongtai_train.backends``…)
has one abstract base class in the package that owns it. A configured driver is
loaded with :func:`load_driver` and fails loudly; :func:`available_drivers` lists
what is installed and carries on past broken entries.
"""

from __future__ import annotations

from typing import Any


class DriverError(Exception):
    """A configured driver is unknown or failed to load."""


def load_driver(namespace: str, name: str) -> Any:
    """Return the class registered as ``name`` in ``namespace``.

    Raises:
        DriverError: naming the available drivers when ``name`` is unknown, or the
            import error when the driver's package is broken or missing an extra.
    """
    from stevedore import DriverManager
    from stevedore.exception import NoMatches

    errors: list[str] = []

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        errors.append(f"{entry_point.name}: {type(exc).__name__}: {exc}")

    try:
        # Checked first: DriverManager logs its own warning for a missing name.
        if name not in _installed_names(namespace):
            raise NoMatches(name)
        manager = DriverManager(
            namespace, name, invoke_on_load=False, on_load_failure_callback=on_failure
        )
    except NoMatches:
        if errors:
            raise DriverError(f"{namespace} driver {name!r} failed to load: {errors[0]}") from None
        names = ", ".join(sorted(available_drivers(namespace))) or "none installed"
        raise DriverError(f"unknown {namespace} driver {name!r}; available: {names}") from None
    return manager.driver


def _installed_names(namespace: str) -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=namespace)}


def available_drivers(namespace: str) -> dict[str, str | None]:
    """``{name: None or load error}`` for every driver installed in ``namespace``."""
    from stevedore import ExtensionManager

    status: dict[str, str | None] = {}

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        status[entry_point.name] = f"{type(exc).__name__}: {exc}"

    manager = ExtensionManager(namespace, on_load_failure_callback=on_failure)
    for ext in manager.extensions:
        status[ext.name] = None
    return status
