-- Runs once, when the postgres-data volume is first initialised (docker-entrypoint-initdb.d),
-- as POSTGRES_USER, who therefore owns both databases. To re-run it: remove the volume
-- (docker compose -f docker/compose.yaml down -v deletes ALL stack data).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
