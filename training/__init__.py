"""Training and evaluation tools: the pretraining corpus, the trainer, the zero-shot benchmark.

Nothing here is imported by the service; it depends on `model/` only."""
