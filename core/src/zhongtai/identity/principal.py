"""Who is acting: a user, possibly through an API key that narrows what it may do."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller of a request or the owner of a job.

    A key never holds more than its owner currently holds: its scope only narrows
    the owner's roles (to one project, and to a subset of permissions).
    """

    user_id: str
    is_superuser: bool = False
    api_key_id: str | None = None
    key_project_id: str | None = None  # the key works in this project only
    key_permissions: frozenset[str] | None = None  # None: all the owner holds

    def key_allows(self, permission: str, project_id: str | None) -> bool:
        """Whether the key's own scope admits ``permission`` on ``project_id``."""
        if self.key_project_id is not None and project_id != self.key_project_id:
            return False
        return self.key_permissions is None or permission in self.key_permissions
