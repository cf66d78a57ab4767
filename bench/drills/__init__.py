"""The hardening drills of round two, one module per group; ``bench/hardening.py`` runs them.

- ``base``: the tree under test (``--src``), a run's ports and processes, ``roomcast serve``
  of that tree, a drill and its cases, the source addresses.
- ``frames``, ``api_port``, ``descriptors``, ``fastapi_path``, ``rooms``, ``presence``,
  ``expiry``, ``supervisor``, ``logs``: the drills (``DRILLS`` in ``runner`` lists them).
- ``runner``: runs the selected drills, one table row per case; the before/after tables of
  ``--compare``.

What any benchmark could use (server processes, the raw WebSocket client and HTTP requests,
the ``/healthz`` prober, formatting) is in ``harness/``, and no drill module imports another
(only ``base``).
"""
