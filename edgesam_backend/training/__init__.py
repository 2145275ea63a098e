"""Training: region proposal module (``rpn``), synthetic data, and distillation (``[torch]`` extra)."""
