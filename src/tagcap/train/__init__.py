"""Training (a Lightning loop over cached features) and checkpoints (safetensors + JSON)."""
