"""What the fields of audit and access events mean, as pure functions.

Great-circle distance, local solar hour, verbs of action names, resource
kinds and names, network prefixes; shared by the access and audit detectors.

>>> round(haversine_km(52.52, 13.40, 40.71, -74.01))   # Berlin - New York
6385
>>> model_id_of("model:fraud-scorer:3"), model_id_of("dataset:x")
('fraud-scorer', None)
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "ATLAS_ACCOUNTS",
    "haversine_km",
    "ip_prefix",
    "is_dataset",
    "is_model",
    "local_hour",
    "model_id_of",
    "resource_tokens",
    "verb_of",
]

#: AML.T0012 Valid Accounts: credentials used by someone other than their owner.
ATLAS_ACCOUNTS: Final = ["AML.T0012"]

_EARTH_RADIUS_KM: Final = 6371.0088


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def local_hour(ts: float, lon: float | None) -> int:
    """Hour of the day (0-23) in local solar time at longitude ``lon`` (UTC if None).

    Solar time follows the person when they travel, without a time-zone
    database; it differs from civil time by an hour or two at most, which the
    detectors' hour tolerance absorbs.

    >>> local_hour(0.0, None), local_hour(0.0, 135.0), local_hour(0.0, -75.0)
    (0, 9, 19)
    """
    offset = 0.0 if lon is None else lon / 15.0
    return int((ts / 3600.0 + offset) % 24.0)


def verb_of(action: str) -> str:
    """The verb of a dotted action: ``dataset.read`` -> ``read``."""
    return action.rpartition(".")[2]


def is_dataset(resource: str, resource_type: str | None) -> bool:
    return resource_type == "dataset" or resource.startswith("dataset:")


def is_model(resource: str, resource_type: str | None) -> bool:
    return resource_type == "model" or resource.startswith("model:")


def model_id_of(resource: str | None) -> str | None:
    """Model name of a ``model:NAME[:VERSION]`` resource, else None."""
    if not resource or not resource.startswith("model:"):
        return None
    name = resource.split(":", 2)[1]
    return name or None


def ip_prefix(ip: str) -> str:
    """The /24 of an IPv4 address or the /48 of an IPv6 one: one network, not one host.

    >>> ip_prefix("203.0.113.7"), ip_prefix("2001:db8:1:2::5")
    ('203.0.113', '2001:db8:1')
    """
    if ":" in ip:
        return ":".join(ip.split(":")[:3])
    return ip.rpartition(".")[0] or ip


_TOKEN_SPLIT: Final = re.compile(r"[:/@,;=\s|]+")
def resource_tokens(resource: str) -> list[str]:
    """Parts of a resource name: ``role:admin:alice`` -> ``['role', 'admin', 'alice']``."""
    return [t for t in _TOKEN_SPLIT.split(resource) if t]
