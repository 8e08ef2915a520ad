# The dualtrack package: one image for the demo router and the adapter
# (docker-compose.yml runs both). Build: docker build -t dualtrack:local .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
# The build needs pyproject.toml, README.md, src/ and the bundled rules/ and
# scenarios/ (force-included into the wheel); .dockerignore keeps the rest out.
COPY . .
RUN pip install . \
    && rm -rf /build \
    # A fixed, unprivileged user. /shared is where the preferences file lives:
    # a named volume mounted there starts as a copy of this (empty, owned by
    # dualtrack) folder, so the non-root adapter can write to it.
    && useradd --create-home --uid 10001 --user-group dualtrack \
    && mkdir -p /shared \
    && chown dualtrack:dualtrack /shared

USER dualtrack
WORKDIR /home/dualtrack
# 9464: a router's /metrics; 9465: the adapter's /metrics.
EXPOSE 9464 9465
ENTRYPOINT ["dualtrack"]
CMD ["--help"]
