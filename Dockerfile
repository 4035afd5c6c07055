# edgesim: one image for the edge, the PKI toolkit and the fleet simulator.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY certs ./certs
COPY edge ./edge
COPY devices ./devices
RUN pip install --no-cache-dir .
ENTRYPOINT ["edgesim"]
