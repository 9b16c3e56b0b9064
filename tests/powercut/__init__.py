"""A FUSE file system that simulates a power cut (:mod:`.fs`, :mod:`.model`), its test-side handle
(:mod:`.mount`), its self-tests, and the test that measures what the spool loses in a power cut."""
