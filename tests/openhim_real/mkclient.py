"""A POS client with Basic auth for the core's ``POST /clients``: :func:`pos_client`, used by ``core.py``;
run as a script it prints that JSON (``bootstrap.sh``).

The core compares ``hex(sha512(password + salt))`` with ``passwordHash``
(src/middleware/basicAuthentication.js).
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from typing import Any


def pos_client(client_id: str, password: str) -> dict[str, Any]:
    salt = str(uuid.uuid4())
    return {
        "clientID": client_id,
        "name": f"POS {client_id}",
        "roles": ["client-registry-pos"],
        "passwordAlgorithm": "sha512",
        "passwordSalt": salt,
        "passwordHash": hashlib.sha512((password + salt).encode()).hexdigest(),
    }


if __name__ == "__main__":
    print(json.dumps(pos_client(sys.argv[1], sys.argv[2])))
