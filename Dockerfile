# kvmops in a container, talking to the host's libvirtd through its mounted socket:
#
#   docker build -t kvmops .
#   docker run --rm -v /var/run/libvirt:/var/run/libvirt -v "$PWD/manifests:/manifests:ro" \
#     kvmops plan /manifests
#
# Two stages: libvirt-python has no wheels on PyPI, so it is compiled in the first stage
# (gcc, libvirt-dev) and only the wheels and the libvirt client library reach the image.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV KVMOPS_CONNECT=qemu:///system \
    KVMOPS_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/manifests"]
ENTRYPOINT ["kvmops"]
CMD ["apply", "/manifests"]
