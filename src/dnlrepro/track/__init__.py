"""MLflow tracking (train@, evaluate@; prepare@ creates the store)."""
