"""``python -m mediator.admin create-user NAME`` (password from the prompt, or one line on stdin),
``python -m mediator.admin remove-user NAME``, ``python -m mediator.admin list-users``,
``python -m mediator.admin show-rules`` (which matching rules are in effect: applied by a re-match job, or
the ``CR_RULES`` file), ``python -m mediator.admin reset-rules`` (forget the applied rules, stored in HAPI at
``CR_HAPI_URL``; running mediators keep theirs until restarted — or use the jobs page's button).

Users live in ``CR_ADMIN_USERS_FILE`` (default ``var/admin-users.json``); there is no default user.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

import aiohttp

from .. import applied_rules
from ..fhir_client import HapiClient
from ..settings import Settings
from .auth import with_secret_key
from .users import UserStore


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit("The passwords differ.")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediator.admin", description="Manage HIE admin users.")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-user", help="create a user or set a new password")
    create.add_argument("name")
    remove = sub.add_parser("remove-user", help="remove a user (their sessions stop working)")
    remove.add_argument("name")
    sub.add_parser("list-users")
    sub.add_parser("show-rules", help="which matching rules are in effect (applied by a job, or the file)")
    sub.add_parser("reset-rules", help="forget the rules a re-match applied; use the CR_RULES file again")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command in ("show-rules", "reset-rules"):
        return asyncio.run(_rules_command(args.command, settings))
    # the session key the mediators will share, made with the users' file if it is not there yet
    store = UserStore(with_secret_key(settings).admin.users_file)
    if args.command == "create-user":
        try:
            store.set_password(args.name, _password())
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"admin user {args.name} saved in {store.path}")
    elif args.command == "remove-user":
        if not store.remove(args.name):
            print(f"error: no user {args.name}", file=sys.stderr)
            return 1
        print(f"admin user {args.name} removed")
    else:
        print("\n".join(store.names()))
    return 0


async def _rules_command(command: str, settings: Settings) -> int:
    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(
            session, settings.hapi_base_url, settings.hapi_timeout_s, settings.hapi_connect_timeout_s
        )
        if command == "reset-rules":
            removed = await applied_rules.remove(hapi)
            print(
                f"applied rules removed; running mediators use the rules file {settings.rules_path} within "
                "CR_RULES_POLL_S (or at their next start if it is 0)"
                if removed
                else f"no applied rules stored; the rules file {settings.rules_path} is in effect"
            )
            return 0
        try:
            applied = await applied_rules.read(hapi)
            if applied is not None:
                applied.rules()  # validated like the file
        except applied_rules.StoredRulesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if applied is None:
            print(f"rules file {settings.rules_path}")
        else:
            by = f" by {applied.applied_by}" if applied.applied_by else ""
            print(f"applied by job {applied.job_id}{by} at {applied.applied_at} (over {settings.rules_path})")
        return 0


if __name__ == "__main__":
    sys.exit(main())
