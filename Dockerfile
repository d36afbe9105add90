# The socket node image: the package, the demo app, nothing else.
# Nodes run `python -m cluster node`; the same image runs the Celery worker.
# Its entrypoint (deploy/require-secrets) refuses to start either without
# SECRET_KEY and CLUSTER_SIGNING_SECRET, so the compose file can leave them
# unchecked and `docker compose down` works in a shell without them.
ARG PYTHON_TAG=3.11-slim

# The demo's browser client: the socket.io-client version pinned by
# demo/js/package-lock.json, downloaded from the npm registry and checked
# against the lock's sha512 (no Node.js in the image, no CDN at run time).
FROM python:${PYTHON_TAG} AS browser-client
WORKDIR /client
COPY demo/js/package.json demo/js/package-lock.json demo/fetch_client.py ./
RUN python fetch_client.py --lock package-lock.json --dest /client

FROM python:${PYTHON_TAG}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
# greenlet, eventlet and gevent at the versions ./dev test runs the suite with
COPY constraints/runtime.txt ./constraints/runtime.txt
COPY cluster ./cluster
COPY session_store ./session_store
COPY workers ./workers
COPY demo ./demo
COPY deploy/require-secrets /usr/local/bin/require-secrets
COPY --from=browser-client /client/node_modules/socket.io-client/dist/socket.io.min.js \
     ./demo/js/node_modules/socket.io-client/dist/socket.io.min.js
# both runtimes (CLUSTER_ASYNC_MODE=eventlet, the default, or gevent), pinned
RUN pip install -c constraints/runtime.txt ".[demo,gevent]" \
    && chmod 755 /usr/local/bin/require-secrets \
    && useradd --system --uid 999 --home-dir /app --shell /usr/sbin/nologin socketio
# numeric, so Kubernetes can check runAsNonRoot (the Helm chart runs as 999)
USER 999

EXPOSE 5000
HEALTHCHECK --interval=5s --timeout=3s --retries=12 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["/usr/local/bin/require-secrets"]
CMD ["python", "-m", "cluster", "node", "--app", "demo.app:socketio", "--host", "0.0.0.0", "--port", "5000"]
