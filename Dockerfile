FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY batchrelay ./batchrelay
RUN pip install --no-cache-dir .
# A user of its own (not root, not the shared `nobody`) with a fixed uid, and /data, the one place it
# writes (results, serve's uploaded files). Compose mounts a named volume there: Docker fills a new named
# volume from the image, owner included, so it is writable by this user whatever the host's uids are.
# (A bind mount of a host directory keeps the host's owner, which this user is not.)
RUN groupadd --gid 10001 batchrelay \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin batchrelay \
 && install -d -o batchrelay -g batchrelay /data /data/files
# numeric, so a runtime that requires a non-root user (Kubernetes runAsNonRoot) can verify it
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["batchrelay"]
CMD ["--help"]
