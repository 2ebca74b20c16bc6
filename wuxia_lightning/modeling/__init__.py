"""Modeling: base models, tokenizers, quantisation, tiny offline models, adapter stacking."""
