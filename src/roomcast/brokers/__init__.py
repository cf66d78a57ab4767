"""Brokers: what carries a hub's deliveries between instances (``base`` has the contract).

``memory`` serves instances in one process, ``redis`` (``RedisBroker``) many processes and hosts
over Redis or Redis Cluster pub/sub, with ``redis_pubsub`` (``RedisPubSub``) putting the
dict-handler API on it; ``envelope`` is the wire format they share.
"""
