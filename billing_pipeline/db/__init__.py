"""The billing database: tables, migrations, idempotent writes and the scenario loader."""
