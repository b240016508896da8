# The image docker-compose.yml builds.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY jobs ./jobs
COPY sql ./sql
RUN pip install . && useradd --system --no-create-home harvester
USER harvester
# 8080: harvester api; 9100: worker metrics when HARVESTER_METRICS_PORT=9100.
EXPOSE 8080 9100
CMD ["harvester", "worker"]
