"""Who may do what in which room: capabilities in tokens, namespaces, personal rooms.

Pure decisions shared by ``roomcast serve`` and the FastAPI managers; see ``rooms``.
"""

from roomcast.rules.capabilities import ALL_ACTIONS, Action, Capabilities, ClaimError, Pattern
from roomcast.rules.namespaces import DEFAULT, Namespace, Namespaces, PresenceFor, RulesError
from roomcast.rules.rooms import Cause, Refusal, Rules, Who, personal_owners

__all__ = [
    "ALL_ACTIONS",
    "DEFAULT",
    "Action",
    "Capabilities",
    "Cause",
    "ClaimError",
    "Namespace",
    "Namespaces",
    "Pattern",
    "PresenceFor",
    "Refusal",
    "Rules",
    "RulesError",
    "Who",
    "personal_owners",
]
