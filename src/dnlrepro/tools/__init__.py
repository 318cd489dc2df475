"""Commands outside the DAG: predict, show-config."""
