"""Tables, the diff report against the published numbers, and the CI check."""
