# The image cluster.yaml, configs/kuberay-rayservice.yaml and configs/k8s-cronjobs.yaml run
# (registry.example.com/conflict-predictor:<tag>): Ray's official 2.60 image on Python 3.11,
# the project at /app with its locked runtime dependencies in the virtualenv /app/.venv, run
# as Ray's non-root user. Build from the repository root:
#   docker build -t registry.example.com/conflict-predictor:latest .
# tests/test_container_image.py checks that every config refers to what this file builds.
FROM rayproject/ray:2.60.0-py311

LABEL org.opencontainers.image.title="conflict-predictor" \
      org.opencontainers.image.description="Conflict Predictor: Ray Jobs training and the Ray Serve prediction app"

USER root
# /app holds the code and the virtualenv; /data is where a volume with the store's exports,
# training sets and model artifacts is mounted (CONFLICT_DATA_DIR).
RUN mkdir -p /app /data && chown ray:users /app /data
USER ray
WORKDIR /app

# Dependencies first, from the lock, so a code change does not reinstall them.
COPY --chown=ray:users requirements.lock ./
RUN python -m venv /app/.venv \
    && /app/.venv/bin/python -m pip install --no-cache-dir --upgrade pip \
    && /app/.venv/bin/python -m pip install --no-cache-dir --require-virtualenv -r requirements.lock

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users conflict_core ./conflict_core
COPY --chown=ray:users training ./training
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users ray_control ./ray_control
COPY --chown=ray:users conflictctl ./conflictctl
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users serve_config.yaml ./
# Editable, as cluster.yaml's setup command re-installs it over a synced /app.
RUN /app/.venv/bin/python -m pip install --no-cache-dir --no-deps -e /app

# `ray start` (KubeRay runs it from PATH) and every `python -m jobs.*` use the virtualenv.
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    CONFLICT_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
