"""Analyses of traced states, in memory or streamed from a store: which units encode a feature
(:mod:`.probes`, with :mod:`.probe_stream` and :mod:`.pearson` for stores larger than memory)
and what the model does without them (:mod:`.ablation`)."""
