"""``roomcast serve``: the ready server, one face of the hub (the other is ``roomcast.fastapi``).

``server`` wires the parts: ``config`` (settings), ``gate`` (who may upgrade), ``pages`` (GETs),
``session`` (client messages), ``publish_api`` (``POST /api/publish``), ``stats`` (the
``$stats`` room).  Importing this package imports picows and prometheus_client (the
``server`` extra); ``import roomcast`` does not import it.
"""
