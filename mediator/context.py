"""Typed application keys shared by the handlers, the OpenHIM integration and the admin API."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .config import ConfigHolder
from .metrics import Metrics
from .registry import SubmissionResult
from .retraction import Retraction
from .settings import Settings
from .store import FhirStore

SETTINGS = web.AppKey("settings", Settings)
CONFIG = web.AppKey("config", ConfigHolder)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
# the FHIR store in force: ``app[STORE].hapi`` (its client), ``app[STORE].registry``, read at each use
STORE = web.AppKey("store", FhirStore)
METRICS = web.AppKey("metrics", Metrics)
STARTED_AT = web.AppKey(
    "started_at", str
)  # when this app was made (FHIR dateTime): the capability statement's date

# per request: the registry decision, for the OpenHIM envelope's properties
REGISTRY_RESULT = web.RequestKey("registry_result", SubmissionResult)
# per request: the retracted record (DELETE), for the OpenHIM envelope's properties
RETRACTION = web.RequestKey("retraction", Retraction)
