"""``zhongtai users``: create and list accounts from the shell (added by the identity plugin).

``zhongtai users create --superuser`` is the shell's way to make the first
administrator, next to the setup link the server prints when it has no user. The
same rules as the API apply (:mod:`zhongtai.identity.api.users`): a weak password or
a malformed email exits with status 2 and the rule broken, a taken email with 1.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

__all__ = ["users"]


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"zhongtai: {message}", err=True)
    sys.exit(code)


@click.group()
def users() -> None:
    """User accounts: create, list."""


@users.command("create")
@click.option("--email", required=True, help="The account's email address (its login).")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Omit to be asked (hidden, twice); avoid it on shared machines: it lands in history.",
)
@click.option("--display-name", default="", help="The name shown for the account.")
@click.option("--superuser", is_flag=True, help="Make the account a site administrator.")
def create(email: str, password: str, display_name: str, superuser: bool) -> None:
    """Create an account (as ``POST /api/v1/users`` does), audited as ``user.create``."""
    from zhongtai.cli import operator_errors, platform_or_exit
    from zhongtai.identity import audit
    from zhongtai.identity.api.users import (
        DISPLAY_NAME_MAX,
        AccountError,
        add_user,
        check_password,
        normalize_email,
    )
    from zhongtai.identity.passwords import hash_password

    try:
        address = normalize_email(email)
    except ValueError as exc:
        _fail(f"email: {exc}", 2)
    if len(display_name) > DISPLAY_NAME_MAX:
        _fail(f"display name: must be at most {DISPLAY_NAME_MAX} characters", 2)
    # The schema is migrated on the embedded database; PostgreSQL must be up to date.
    platform = platform_or_exit(schema="auto")
    try:
        try:
            check_password(
                password,
                min_length=platform.settings.identity.password_min_length,
                email=address,
            )
        except AccountError as exc:
            _fail(f"{exc.field}: {exc.message}", 2)
        hashed = hash_password(password)
        try:
            with operator_errors(), platform.db.transaction() as session:
                user = add_user(
                    session,
                    email=address,
                    password_hash=hashed,
                    display_name=display_name,
                    is_superuser=superuser,
                )
                audit.record(
                    session,
                    action="user.create",
                    target_kind="user",
                    target_id=user.id,
                    detail={"via": "cli", "email": address, "is_superuser": superuser},
                )
                user_id = user.id
        except AccountError as exc:
            _fail(f"{exc.field}: {address} is {exc.message}", 1)
    finally:
        platform.close()
    kind = "superuser" if superuser else "user"
    click.echo(f"zhongtai: created {kind} {address} ({user_id})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def list_users(as_json: bool) -> None:
    """List every account: id, email, flags, display name."""
    from sqlalchemy import select

    from zhongtai.cli import operator_errors, platform_or_exit
    from zhongtai.identity.api.users import user_dict
    from zhongtai.identity.models import User

    platform = platform_or_exit(schema="check")
    try:
        with operator_errors(), platform.db.transaction() as session:
            rows = [user_dict(u) for u in session.scalars(select(User).order_by(User.id))]
    finally:
        platform.close()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
            continue
        flags = ",".join(
            flag
            for flag, on in (("superuser", row["is_superuser"]), ("inactive", not row["is_active"]))
            if on
        )
        click.echo(f"{row['id']}  {row['email']:<40} {flags or '-':<20} {row['display_name']}")
