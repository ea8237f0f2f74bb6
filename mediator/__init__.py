"""The client registry mediator: FHIR endpoints in front of a HAPI FHIR store.

Public entry points: :func:`mediator.app.create_app` and :class:`mediator.settings.Settings`.
Follow one submission: ``handlers.py`` (HTTP) → ``registry.py`` (workflow) → ``unit_of_work.py`` →
``fhir_client.py`` (HAPI).
"""
