# syntax=docker/dockerfile:1
#
# lifeos-backup image: the Celery worker, Beat and Flower of the Life-OS backup system.
# One image, three roles; docker-compose.yml picks the role with `command:`.
#
#   docker build -t lifeos-backup:local .
#
# Versions are build arguments so that an operator can move them without editing this file.
# PG_MAJOR must match the major version of the PostgreSQL server being dumped (postgres:15):
# pg_dump refuses to dump a server newer than itself.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Stage 1: build the project and its dependencies into a self-contained virtualenv.
# Every dependency ships manylinux wheels (psycopg[binary], zstandard, cryptography, pyrage),
# so no compiler is needed here.
# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore is an allowlist: only pyproject.toml, README.md and the project's packages come in.
COPY . .
RUN pip install --no-cache-dir .

# ---------------------------------------------------------------------------------------------
# Stage 2: runtime. pg_dump/psql of the server's major version, zstd, tini; no build tools.
# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime

# Debian version globs: the major version is pinned, the patch level follows Debian's
# security updates (an exact pin would break the build as soon as the archive moves on).
ARG PG_MAJOR=15
ARG TINI_VERSION=0.19.*
ARG ZSTD_VERSION=1.5.*
ARG LIFEOS_UID=10001
ARG VERSION=0.1.0

# A failing stage of a pipe (pg_dump --version | grep) must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

LABEL org.opencontainers.image.title="lifeos-backup" \
      org.opencontainers.image.description="Backup and recovery for Life-OS, run as Celery workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.vendor="Life-OS" \
      org.opencontainers.image.base.name="python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}" \
      io.lifeos.backup.pg-major="${PG_MAJOR}"

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "postgresql-client-${PG_MAJOR}=${PG_MAJOR}.*" \
        "tini=${TINI_VERSION}" \
        "zstd=${ZSTD_VERSION}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version | grep -q " ${PG_MAJOR}\." \
    && groupadd --system --gid "${LIFEOS_UID}" lifeos \
    && useradd --system --uid "${LIFEOS_UID}" --gid lifeos --home-dir /home/lifeos \
        --create-home --shell /usr/sbin/nologin lifeos \
    && install -d -o lifeos -g lifeos -m 0700 /backups /backups/.state

COPY --from=build /opt/venv /opt/venv

# A new named volume mounted on /backups inherits this directory's owner and 0700 mode.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIFEOS_BACKUP_ROOT=/backups

WORKDIR /home/lifeos
USER ${LIFEOS_UID}:${LIFEOS_UID}

# Liveness of the default role (the worker): it must answer a Celery ping through the broker.
# docker-compose.yml sets its own checks for the beat and flower roles.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A workers inspect ping --destination \"celery@$HOSTNAME\" --timeout 10 > /dev/null || exit 1"]

# tini reaps zombies (pg_dump, zstd children) and forwards SIGTERM so Celery shuts down warm.
ENTRYPOINT ["tini", "--"]
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
