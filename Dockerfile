FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aios aios
COPY workers workers
COPY agents agents
RUN pip install --no-cache-dir .
ENV AIOS_DATA_DIR=/data
