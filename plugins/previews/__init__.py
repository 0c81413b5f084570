"""Derived objects of series: the ``previews`` job and its built-in generators.

- :mod:`plugins.previews.pipeline` (entry point ``previews``) queues one job per series when
  instances are stored (after ``previews.settle_seconds`` with no new instance) or an upload
  completes (at once), and runs it: every slice is decoded once and handed to each
  generator, on ``previews.threads`` threads;
- :mod:`plugins.previews.generators` says what a generator is (hook ``derived_generators``);
- the built-in generators, each its own entry point exactly as a third-party one would be:
  :mod:`~plugins.previews.jpeg2000` (the preview stream) and
  :mod:`~plugins.previews.thumbnails` (256 and 512 px, JPEG and PNG).
"""
