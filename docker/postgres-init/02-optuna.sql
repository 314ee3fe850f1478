-- The database of `skin sweep` studies (Optuna creates its tables on first use). Like
-- 01-databases.sql it runs only when the postgres-data volume is first initialised; on an older
-- volume create it once by hand:
--   docker compose -f docker/compose.yaml exec postgres psql -U skin -c 'CREATE DATABASE optuna'
CREATE DATABASE optuna;
