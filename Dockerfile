# The client registry mediator. Built by docker-compose.yml; runs `python -m mediator` on port 3000.
# Settings are CR_* environment variables (mediator/settings.py); behind OpenHIM set CR_OPENHIM_API_URL etc.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# dependencies first (cached while only the code changes)
COPY pyproject.toml ./
COPY mediator/__init__.py mediator/__init__.py
COPY matching/__init__.py matching/__init__.py
RUN pip install . && pip uninstall -y client-registry

# the code, the decision rules and the OpenHIM registration document; run from /app (REPO_ROOT)
COPY mediator/ mediator/
COPY matching/ matching/
COPY rules/ rules/
COPY mediator-config.json ./

# the mediator's state (admin users, session key, resumable bulk and re-match jobs) lives in /app/var: the
# only directory it writes, made its user's here (/app is root's); docker-compose.yml keeps it on a volume
RUN useradd --system --uid 10001 registry && mkdir -p /app/var && chown registry /app/var
USER registry

ENV CR_HOST=0.0.0.0 CR_PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/health', timeout=4).status != 200)"
CMD ["python", "-m", "mediator"]
