# pagehint: one image for the host and the guest services (see docker-compose.yml).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pagehint ./pagehint
COPY virtqueue ./virtqueue
COPY guest ./guest
COPY host ./host
COPY lab ./lab
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home pagehint

# The host serves gRPC on 50051; both services can serve Prometheus metrics on 9100.
EXPOSE 50051 9100
ENTRYPOINT ["pagehint"]
CMD ["--help"]
