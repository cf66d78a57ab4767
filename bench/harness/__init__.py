"""The benchmark harness: the machinery under the scenario scripts in ``bench/``.

A scenario (``fanout.py``, ``serve.py``, ``scaleout.py``, ``idle.py``, ``redis_shard.py``,
``history.py``, ``hardening.py`` with its drills in ``drills/``) parses its arguments, runs its
phases in its order, checks its targets and puts its report together; everything else is here,
and no scenario imports another.

- ``processes``: server subprocesses that die with the driver (in a session of their own, if
  asked: stopped with their whole group), CPU (schedstat, psutil) and RSS readers from ``/proc``.
- ``raw_ws``, ``raw_http``: a minimal WebSocket client and frames built by hand (for hostile
  or broken clients), HTTP/1.1 requests by hand, a ``/healthz`` prober; asyncio.
- ``clients``: the load-generating client worker process (picows or websockets' sans-I/O).
- ``workers``: the driver's side of those workers (start, command, delivery wait).
- ``targets``: the servers under test (``roomcast serve`` and the peers in ``peers/``), their
  publish triggers and connection counts.
- ``deployment`` (``serve.py``), ``cluster`` (``scaleout.py``), ``uvicorn_apps``
  (``fanout.py``), ``heartbeat`` and ``registry_load`` (``idle.py``), ``pairs`` and ``storm``
  (``history.py``): a scenario's servers with their clients at work: connect, broadcast or
  idle, measure, summarise.
- ``recovery``: the recovering client worker (``history.py``'s storm): positions, offsets
  checked, sockets cut, rejoins with ``since``.
- ``tables``: each scenario's Markdown tables (one module per scenario); ``plot``: ``serve.py``'s
  delivery-time plot.
- ``cli``: the flags several scenarios share (client workers, ``--deadline``, ``--snapshot``,
  ``--no-sysctl``), the run's frame they set up, servers chosen by name.
- ``stats``: medians, percentiles, latency summaries, GC deltas, least-squares fits.
- ``report``: progress log, number (MB, counts) formatting, the report's first lines and other
  shared parts, result files.
- ``meta``: run metadata (git state, package versions, host-steadiness probe).
- ``runs``: results directory, process setup, run deadline, ``git archive`` snapshots of src/.
- ``limits``: ``RLIMIT_NOFILE``, the ephemeral port range, client sockets bound with
  ``IP_BIND_ADDRESS_NO_PORT``.
- ``message``, ``gcclock``: imported inside the servers under test too (``apps.py``,
  ``peers/``); standard library only.

The throwaway redis-server and ``free_port`` are ``roomcast.testing``'s, shared with the tests.
No module here imports roomcast at import time: ``idle.py --snapshot`` must put a frozen
``src/`` on ``sys.path`` before roomcast is first imported.
"""
