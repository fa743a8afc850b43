"""The entry points a user calls: :func:`~rnnlens.trace` and :func:`~rnnlens.describe`
(:mod:`.tracer`), :func:`~rnnlens.load_model` (:mod:`.loader`), :func:`~rnnlens.intervene`
(:mod:`.intervention`) and :func:`~rnnlens.record` (:mod:`.recording`).

They check the options, pick the adapter through the registry and assemble its arrays with the
core; :mod:`rnnlens.extract` and :mod:`rnnlens.analysis` build on them.
"""
