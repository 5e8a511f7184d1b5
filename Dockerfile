# kubepim operator image: multi-stage, slim pinned base, non-root, no build tools at run time.
# Build: docker build -t kubepim:dev .   (lint: hadolint Dockerfile)

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels kubepim==0.1.0 && rm -rf /wheels \
    && groupadd --gid 65532 kubepim \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin kubepim
USER 65532:65532
# webhook, metrics, liveness
EXPOSE 9443 8000 8080
ENTRYPOINT ["python", "-m", "kubepim"]
