"""PyTorch networks behind the classifier plugins (imported only when a model is built)."""
