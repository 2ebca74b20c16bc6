"""wuxia_lightning: teach a causal LM a literary style (stage 1), then chat in it (stage 2)."""

__version__ = "0.1.0"
