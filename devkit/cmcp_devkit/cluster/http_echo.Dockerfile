# The e2e test image cmcp-test-http-echo: cmcp_devkit/cluster/http_echo.py (standard library only) on
# the same Python base as the product images. Built by `python -m cmcp_devkit.images test-http-echo`
# (the e2e session builds it beside the four product images); never shipped.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}
COPY devkit/cmcp_devkit/cluster/http_echo.py /opt/http-echo/http_echo.py
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["python3", "/opt/http-echo/http_echo.py"]
