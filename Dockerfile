# pagehint: one image for the host and the guest services (docker-compose.yml,
# deploy/kubernetes/). Uses nothing BuildKit-only; deploy/compose.sh builds it with
# the classic builder (Debian's docker.io has no buildx), BuildKit is not tested here.
#
#   docker build -t pagehint .                       # from the package index
#
# Offline (no registry, no package index; what deploy/compose.sh does):
#   docker build --build-arg BASE=pagehint-base:bookworm \
#     --build-arg WHEELS=build/wheels \
#     --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheels" -t pagehint .
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG WHEELS=deploy/docker/wheels
ARG PIP_INSTALL_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/pagehint
COPY ${WHEELS} /wheels
# Dependencies first, in their own layer: a change to the source below reuses it.
COPY pyproject.toml deploy/docker/requirements.py /src/
RUN python3 /src/requirements.py /src/pyproject.toml > /src/requirements.txt \
    && /opt/pagehint/bin/pip install $PIP_INSTALL_ARGS --upgrade "setuptools>=77" wheel \
    && /opt/pagehint/bin/pip install $PIP_INSTALL_ARGS -r /src/requirements.txt
COPY README.md LICENSE /src/
COPY pagehint /src/pagehint
COPY virtqueue /src/virtqueue
COPY guest /src/guest
COPY host /src/host
COPY lab /src/lab
# No build isolation: setuptools is already in the venv, and offline there is no
# index to fetch it from; upgraded above to what pyproject.toml's build-system asks
# (the venv's own, from the base's ensurepip, is too old for `license = "MIT"`).
# No dependencies: they are in the layer above.
RUN /opt/pagehint/bin/pip install --no-deps --no-build-isolation /src \
    && /opt/pagehint/bin/pip uninstall -y -q setuptools wheel

FROM ${BASE}
# A fixed uid, so the tmpfs volume that holds the guests' RAM files can be given
# to it (docker-compose.yml: uid=10001) and Kubernetes can run it as non-root.
RUN groupadd --system --gid 10001 pagehint \
    && useradd --system --uid 10001 --gid pagehint --no-create-home --shell /usr/sbin/nologin pagehint
COPY --from=build /opt/pagehint /opt/pagehint
ENV PATH=/opt/pagehint/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
# The host serves gRPC on 50051; both services can serve Prometheus metrics on 9100.
# No HEALTHCHECK here: the image plays two roles and only the host serves the
# health protocol; compose and Kubernetes probe the host themselves.
EXPOSE 50051 9100
ENTRYPOINT ["pagehint"]
CMD ["--help"]
