"""ml_collections configs: model sizes, training stages, post-training recipes."""
