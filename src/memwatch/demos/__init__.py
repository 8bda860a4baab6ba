"""The embedded demo: tiny model, data, tokenizer, Lightning module, run and report."""
