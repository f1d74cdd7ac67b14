# One image for every component of the stack and for Airflow; docker-compose.yml picks the
# component with `python -m pipeline component NAME`, the same command the local backend runs.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       openjdk-17-jre-headless maven make procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# JVM jars live outside the state volume, so a fresh volume does not hide them.
ENV WB_JARS_DIR=/opt/jars
RUN make image-setup JARS=/opt/jars && rm -rf /root/.m2 /root/.cache/pip

ENTRYPOINT ["/app/.venv/bin/python", "-m", "pipeline"]
