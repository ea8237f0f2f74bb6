"""The OpenHIM console config last applied, kept in HAPI so a core that forgot the mediator gets it back.

**Why.** The core keeps the mediator's console config (client map, thresholds, rules) in its own database.
When it forgets the mediator (``DELETE /mediators/:urn``, a reset database), the next heartbeat answers 404
and the mediator registers again; the registration document's ``config`` becomes the core's config, and the
core hands it back on the next heartbeat. Built from the environment, that document would silently replace
the admin's config — with ``"clientSystems": {}``, open mode (issue 19). So the registration carries the
config last applied instead, and that config must survive a restart of the mediator too.

**Where.** One ``Basic`` resource with the fixed id ``cr-openhim-config`` (:data:`RESOURCE_ID`) in the HAPI
the mediator starts with (``CR_HAPI_URL``), beside the registry's other state (``Basic/cr-rules-applied``):
the config as JSON text (``openhim-config-json`` extension) and when it was applied. HAPI, not a file:
replicas share it, so whichever replica registers first after the core forgot gives back the same config,
and a new replica (no local state) does too. Written by each replica that applies a config differing from
the one it last read or wrote there.

It is read from the HAPI of ``CR_HAPI_URL``: a console config that moves the registry to another HAPI
(``hapiBaseUrl``) is kept there, so a restarted mediator should be started with that URL too.

Passwords: the config has no ``password`` parameters (``mediator-config.json``); nothing secret is stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from .fhir_client import HapiClient
from .records import NS

RESOURCE_TYPE = "Basic"
RESOURCE_ID = "cr-openhim-config"
CODE_SYSTEM = f"{NS}:config"
JSON_URL = f"{NS}:openhim-config-json"
APPLIED_AT_URL = f"{NS}:applied-at"


class StoredConfigError(ValueError):
    """The stored document holds no readable config (ignored, and overwritten at the next apply)."""


def to_resource(config: Any) -> dict[str, Any]:
    return {
        "resourceType": RESOURCE_TYPE,
        "id": RESOURCE_ID,
        "code": {
            "coding": [{"system": CODE_SYSTEM, "code": "openhim-console-config"}],
            "text": "OpenHIM console config last applied",
        },
        "extension": [
            {"url": JSON_URL, "valueString": json.dumps(config, sort_keys=True)},
            {"url": APPLIED_AT_URL, "valueDateTime": datetime.now(UTC).isoformat(timespec="seconds")},
        ],
    }


def from_resource(resource: dict[str, Any]) -> Any:
    for ext in resource.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == JSON_URL and isinstance(ext.get("valueString"), str):
            try:
                return json.loads(ext["valueString"])
            except ValueError as exc:
                raise StoredConfigError("the stored OpenHIM config is not JSON") from exc
    raise StoredConfigError("the stored OpenHIM config document holds no config")


async def read(hapi: HapiClient) -> Any:
    """The stored config, or ``None`` when there is none. Raises ``UpstreamUnavailable``/``UpstreamTimeout``
    when HAPI cannot answer, :class:`StoredConfigError` when the document is unreadable."""
    resource = await hapi.read(RESOURCE_TYPE, RESOURCE_ID)
    return None if resource is None else from_resource(resource)


async def write(hapi: HapiClient, config: Any) -> None:
    await hapi.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": to_resource(config),
                    "request": {"method": "PUT", "url": f"{RESOURCE_TYPE}/{RESOURCE_ID}"},
                }
            ],
        }
    )
