"""The core: what every other layer uses, importing nothing above it and no framework.

Specs and the kind table (:mod:`.spec`, :mod:`.kinds`), the cell maths and parity checks
(:mod:`.cells`), the state containers (:mod:`.states`), edits (:mod:`.edits`), option checks
(:mod:`.options`), model identity (:mod:`.digest`), reused buffers (:mod:`.buffers`), the fast
rebuild of c and gates from h (:mod:`.rebuild`, :mod:`.rebuild_cell`), the NumPy step loop
(:mod:`.steploop`), raw arrays to ``States`` (:mod:`.tracing`), optional imports
(:mod:`.optional`), archive checks (:mod:`.archive`), tables and HTML (:mod:`.table`,
:mod:`.html`) and the version (:mod:`.version`). The errors live in :mod:`rnnlens.errors`.
"""
