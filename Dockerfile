# The dashboard as a container: CPU-only torch, the demo model built into the image, a non-root
# user, data on a volume, configuration only by environment and secrets (README, "Shared deployment").
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ICCA_DATABASE_URL=sqlite:////data/icca.db \
    ICCA_ENGINE_CACHE=/data/engine-choice.json \
    ICCA_SIGN_IN_CONFIG=/run/secrets/streamlit_secrets \
    PORT=8501

# pg_dump / pg_restore / psql for `python -m core db backup|restore` against PostgreSQL
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 icca \
    && useradd --system --uid 10001 --gid icca --home-dir /app --shell /usr/sbin/nologin icca \
    && mkdir /data \
    && chown icca:icca /data

WORKDIR /app
COPY requirements.txt .
# CPU-only torch first (the default wheels bring CUDA, several GB the image never uses)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install -r requirements.txt

# Code, model and allow-list stay owned by root: the app (uid 10001) can write /data only, so it can
# neither swap the model nor approve another one.
COPY . .
# The demo model is trained here, once, so that a container serves at once (about 15 min on 2 cores);
# it approves itself on models/weights/allowed-models.txt.
RUN python -m core demo-model --out models/weights/model.pt --no-engine-choice \
    && rm -rf runs/demo/cohort
USER 10001:10001

VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/_stcore/health\", timeout=4)"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
