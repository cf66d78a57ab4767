"""The FastAPI/Starlette face of the hub: the managers over ASGI websockets.

``manager`` (``ConnectionManager``), ``distributed`` (``DistributedWebSocketManager``),
``auth_manager`` (``AuthConnectionManager``), and the ASGI transport (``asgi``, with
``uvicorn_direct``'s direct writes).  Nothing here imports Starlette: the websocket objects are
the application's.
"""
