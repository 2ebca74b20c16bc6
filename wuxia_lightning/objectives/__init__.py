"""Objectives: token losses computed in chunks so full B×T×V logits never exist."""
