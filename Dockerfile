# Container image for users (CI and tests never need Docker).
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e . && python -c "import protos"
EXPOSE 8080
CMD ["switchyard", "up", "--config", "/app/config/docker.yaml"]
