"""Parameter-efficient training and compression of the toolkit's models (LoRA, ...)."""
