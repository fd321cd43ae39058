# flaskrtc in a container: the wheel is built in a builder stage and installed into a slim
# Python runtime, run as an unprivileged user, state (certificate, TURN secret, an optional
# configs/config.ini) in the volume /var/lib/flaskrtc.
#
#   docker build -t flaskrtc .
#   docker run -d --name flaskrtc --network host -v flaskrtc:/var/lib/flaskrtc \
#     -e FLASKRTC_TURN_PUBLIC_IP=203.0.113.5 flaskrtc
#
# or deploy/compose.yaml. Host networking: the relay port range (16384 UDP ports) cannot be
# published port by port, and relays must see clients' real addresses.
# tests/release/test_deploy.py lints this file (hadolint) and, without a Docker engine,
# runs its RUN, CMD and HEALTHCHECK steps in venvs so that a broken command is caught.

FROM python:3.12-slim AS builder
WORKDIR /src
# build isolates itself: it fetches setuptools and wheel (pyproject.toml) on its own.
RUN pip install --no-cache-dir --disable-pip-version-check build==1.2.2.post1
# .dockerignore lets in only what the wheel is made of (no .git, venv, keys or secrets).
COPY . .
RUN python -m build --wheel --outdir /src/dist .

FROM python:3.12-slim
# A fixed uid outside the host's usual range, so the volume's files have a stable owner;
# USER names it by number, which the image does not need /etc/passwd to resolve.
RUN useradd --system --uid 10001 --user-group --no-create-home \
      --home-dir /var/lib/flaskrtc --shell /usr/sbin/nologin flaskrtc \
 && install -d -o flaskrtc -g flaskrtc -m 0700 /var/lib/flaskrtc
COPY --from=builder /src/dist/ /wheels/
RUN pip install --no-cache-dir --disable-pip-version-check /wheels/flaskrtc-*.whl \
 && rm -rf /wheels
# The folder it is started in is its home: ./configs/config.ini if one is in the volume,
# and the generated ./configs/certs/ and ./configs/turn_secret.
WORKDIR /var/lib/flaskrtc
VOLUME /var/lib/flaskrtc
# TURN on 3478, the IANA port (the built-in default is 19302); log lines reach docker logs
# at once.
ENV FLASKRTC_TURN_PORT=3478 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# HTTPS (and /ws, /api/turn), TURN over UDP and TCP, TURN over TLS, the relay range (UDP
# only: flaskrtc relays UDP, no RFC 6062 TCP allocations). With --network host these only
# document; never publish them with -P, which would map 16384 ports one by one.
EXPOSE 8086/tcp 3478/udp 3478/tcp 5349/tcp 49152-65535/udp
# /healthz answers 200 while the process serves. No curl in the slim image: Python's urllib,
# over HTTPS without verifying (the certificate may be self-signed or for another name),
# or plain HTTP when FLASKRTC_GENERAL_TLS is false; the port follows FLASKRTC_GENERAL_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = os.environ.get('FLASKRTC_GENERAL_TLS', 'true').lower() not in ('false', 'no', 'off', '0'); port = os.environ.get('FLASKRTC_GENERAL_PORT', '8086'); u.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + port + '/healthz', context=ssl._create_unverified_context(), timeout=4)"]
CMD ["flaskrtc"]
