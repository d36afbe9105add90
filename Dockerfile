# The socket node image: the package, the demo app, nothing else.
# Nodes run `python -m cluster node`; the same image runs the Celery worker.
ARG PYTHON_TAG=3.11-slim
FROM python:${PYTHON_TAG}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cluster ./cluster
COPY session_store ./session_store
COPY workers ./workers
COPY demo ./demo
RUN pip install ".[demo]" \
    && useradd --system --uid 999 --home-dir /app --shell /usr/sbin/nologin socketio
# numeric, so Kubernetes can check runAsNonRoot (the Helm chart runs as 999)
USER 999

EXPOSE 5000
HEALTHCHECK --interval=5s --timeout=3s --retries=12 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "cluster", "node", "--app", "demo.app:socketio", "--host", "0.0.0.0", "--port", "5000"]
