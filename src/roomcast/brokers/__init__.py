"""Brokers: what carries a hub's deliveries between instances (``base`` has the contract).

``memory`` serves instances in one process, ``redis`` (``RedisPubSub``) many processes and hosts
over Redis or Redis Cluster pub/sub; ``envelope`` is the wire format they share.
"""
