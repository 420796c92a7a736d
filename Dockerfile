# syntax=docker/dockerfile:1
# The devin-etl image. Build: `docker build -t devin-etl:local .`
# Run: `docker run --rm -e DEVIN_API_KEY -e DATABASE_URL devin-etl:local`
# (the daemon; pass another command, e.g. `migrate`, to run that instead).

FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /app

# The dependencies come from pyproject.toml alone, so that a code change
# reuses this layer. Every dependency ships wheels: no compiler is needed.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --requirement /tmp/requirements.txt

# etl.db finds the migrations in migrations/ beside the etl package, so the
# code keeps the repository layout in /app and the venv points at it (an
# editable install) rather than holding a copy in site-packages.
COPY etl ./etl
RUN /opt/venv/bin/pip install --no-deps --editable .


FROM python:3.11.13-slim-bookworm AS runtime

# The daemon must listen on every interface of the container for the health
# check and for Prometheus; the port stays a setting
# (DEVIN_ETL_DAEMON__HTTP_PORT, default 9108), which the health check reads.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEVIN_ETL_DAEMON__HTTP_HOST=0.0.0.0

RUN useradd --system --user-group --uid 10001 --create-home \
        --home-dir /var/lib/devin-etl --shell /usr/sbin/nologin devin-etl

# The code belongs to root, so the process cannot change it; bytecode is
# compiled here because the process may not write beside the sources.
COPY --from=builder /opt/venv /opt/venv
COPY etl /app/etl
COPY migrations /app/migrations
COPY alembic.ini /app/alembic.ini
RUN python -m compileall -q /app/etl /app/migrations

# The working directory holds what is relative in the settings:
# config/devin-etl.toml (mount one there) and the SQLite fallback file.
USER devin-etl
WORKDIR /var/lib/devin-etl
EXPOSE 9108

# /healthz answers 503 until a sync has succeeded and when the last success is
# older than daemon.healthy_max_age_seconds; urlopen raises on it, so exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('DEVIN_ETL_DAEMON__HTTP_PORT') or '9108'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["devin-etl"]
CMD ["daemon"]
