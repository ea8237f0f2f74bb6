"""The OpenHIM console config last applied, kept in HAPI (``Basic/cr-openhim-config``) so that a core that
forgot the mediator gets it back on the re-registration — never the start-up settings (open mode, issue
19) — across mediator restarts and replicas. Why HAPI, and when it is read and written: ``docs/internals.md``.
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
