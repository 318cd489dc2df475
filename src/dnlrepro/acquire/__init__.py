"""Getting the data: download, synthetic archives, extraction, preparation (download@/prepare@)."""
