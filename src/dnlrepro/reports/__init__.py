"""Published numbers, tables, the diff report, the CI check and the multi-GPU launcher."""
