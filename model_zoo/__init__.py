"""Model zoo build pipeline: synthetic surface data, the token-budget ViT, export, quantization.

Only `model_zoo.data` is importable without torch; the rest needs the `train` extra.
"""
