"""What a run starts from: a base model's folder and its tokenizer — a hub id, a local folder, or a tiny
Qwen2/Qwen3 model built offline. Below both ``data`` (which tokenizes) and ``modeling`` (which loads
weights), so neither has to import the other."""
