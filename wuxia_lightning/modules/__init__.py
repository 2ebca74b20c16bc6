"""LightningModules: one training recipe per stage."""
