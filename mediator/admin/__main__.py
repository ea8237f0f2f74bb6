"""``python -m mediator.admin create-user NAME`` (password from the prompt, or one line on stdin),
``python -m mediator.admin remove-user NAME``, ``python -m mediator.admin list-users``.

Users live in ``CR_ADMIN_USERS_FILE`` (default ``var/admin-users.json``); there is no default user.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from .auth import AdminSettings
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
    args = parser.parse_args(argv)
    store = UserStore(AdminSettings.from_env().users_file)
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


if __name__ == "__main__":
    sys.exit(main())
