"""Print the JSON of a POS client with Basic auth for ``POST /clients`` (used by bootstrap.sh).

The core compares ``hex(sha512(password + salt))`` with ``passwordHash``
(src/middleware/basicAuthentication.js).
"""

import hashlib
import json
import sys
import uuid

client_id, password = sys.argv[1], sys.argv[2]
salt = str(uuid.uuid4())
print(
    json.dumps(
        {
            "clientID": client_id,
            "name": f"POS {client_id}",
            "roles": ["client-registry-pos"],
            "passwordAlgorithm": "sha512",
            "passwordSalt": salt,
            "passwordHash": hashlib.sha512((password + salt).encode()).hexdigest(),
        }
    )
)
