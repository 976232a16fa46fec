FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY batchrelay ./batchrelay
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["batchrelay"]
CMD ["--help"]
