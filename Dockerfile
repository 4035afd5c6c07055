# edgesim: one image for the edge, the PKI toolkit and the fleet simulator.
#
# Stage 1 (builder) compiles the connect path into a wheel (gcc is here only);
# stage 2 (runtime) installs that wheel and the locked dependencies, hash-checked.
# No Docker engine runs on the project's machines: this image has never been built.
# tests/packaging/test_wheel.py runs the same build, export and hash-checked install
# outside Docker, and checks that the uv version below is the lock's. The image also
# holds the `cluster` extra (nats-py) so its edges can join a NATS cluster
# (docker-compose.yml's `cluster` profile); installed is not imported: one process
# without --workers/--cluster never loads it.

FROM python:3.11-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# uv at the version uv.lock was made with (`make lock`).
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /src
COPY pyproject.toml uv.lock setup.py README.md ./
COPY certs ./certs
COPY edge ./edge
COPY devices ./devices
# Fails the image when mypyc or gcc cannot compile: the image never ships the
# slower interpreted connect path by accident.
RUN EDGESIM_REQUIRE_COMPILED=1 uv build --wheel --out-dir /dist . \
    && uv export --frozen --no-dev --extra cluster --no-emit-project --format requirements-txt \
        --output-file /dist/requirements.txt

FROM python:3.11-slim AS runtime
COPY --from=builder /dist /dist
RUN pip install --no-cache-dir --require-hashes -r /dist/requirements.txt \
    && pip install --no-cache-dir --no-deps /dist/*.whl \
    && rm -rf /dist \
    && edgesim --version
ENTRYPOINT ["edgesim"]
