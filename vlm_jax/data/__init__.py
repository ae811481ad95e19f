"""Data: vision processor, tokenizer, chat template, packing, Grain pipelines, sources, synthetic world."""
