"""Pure billing rules: no Dagster, no database, no network. Tested on their own."""
