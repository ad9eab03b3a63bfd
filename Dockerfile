# The kvmops controller in a container, talking to the host's libvirtd through its
# mounted socket:
#
#   docker build -t kvmops .
#   docker run -d --name kvmops --restart unless-stopped \
#     -v /run/libvirt:/run/libvirt -v /srv/vms/manifests:/manifests:ro \
#     -v /var/lib/kvmops:/var/lib/kvmops -p 127.0.0.1:9474:9474 kvmops
#
# /var/lib/kvmops is the host's own state directory, so the host lock is shared with any
# `kvmops apply` run on the host: they never act at the same time.
#
# One-shot commands work too: `docker run --rm -v ... kvmops plan /manifests`.
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
    KVMOPS_STATE_DIR=/var/lib/kvmops \
    PYTHONUNBUFFERED=1
VOLUME ["/manifests", "/var/lib/kvmops"]
EXPOSE 9474
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9474/healthz').status != 200)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["kvmops"]
# 0.0.0.0 inside the container: publish it on the host's loopback only (-p 127.0.0.1:9474:9474).
# Other containers on the same Docker network still reach it: to keep /status and /metrics from
# them, mount a token file and replace --listen-insecure by --listen-token-file /run/secrets/kvmops-listen.
CMD ["run", "/manifests", "--listen", "0.0.0.0:9474", "--listen-insecure"]
