"""Client of the Fault Injection API (as served by Faultline's agent).

>>> client = FaultInjectionClient(api_url="http://localhost:8080")
>>> fault = client.inject_network_partition(partition_type=NetworkPartition.WORKER_WORKER,
...     source="dynamo", target="dynamo", mode=NetworkMode.CHAOS_MESH, duration=60,
...     namespace="dynamo", target_pod_prefix="vllm-decode", packet_loss_percent=30,
...     target_nats=False)
>>> client.recover_fault(fault.fault_id)
"""
from __future__ import annotations

import enum
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import httpx

__all__ = [
    "FaultInjectionClient",
    "FaultInjectionError",
    "Fault",
    "NetworkMode",
    "NetworkPartition",
]


class NetworkPartition(str, enum.Enum):
    """`partition_type` of an injection."""

    FRONTEND_WORKER = "frontend_worker"
    WORKER_NATS = "worker_nats"
    WORKER_WORKER = "worker_worker"
    CUSTOM = "custom"


class NetworkMode(str, enum.Enum):
    """`mode`: `networkpolicy` blocks new connections; `chaos_mesh` degrades (loss, delay...)."""

    NETWORKPOLICY = "networkpolicy"
    CHAOS_MESH = "chaos_mesh"


class FaultInjectionError(Exception):
    """The API refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, code: str = "", field: Optional[str] = None):
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass
class Fault:
    """A fault as the API reports it."""

    fault_id: str
    status: str
    namespace: str = ""
    partition_type: Optional[str] = None
    mode: Optional[str] = None
    target_pod_prefix: Optional[str] = None
    target_pods: List[str] = field(default_factory=list)
    created_at: Optional[str] = None
    expires_at: Optional[str] = None
    ended_at: Optional[str] = None
    message: Optional[str] = None
    details: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Fault":
        known = {k: data.get(k) for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @property
    def counters(self) -> Dict[str, int]:
        """Packets matched, dropped, corrupted... by the datapath."""
        return self.details.get("counters", {})

    @property
    def is_active(self) -> bool:
        return self.status in ("active", "pending")


# Parameters of each mode, in the order the API documents them.
_NETWORKPOLICY_PARAMS = ("block_nats", "block_all_egress", "block_ingress", "block_specific_pods", "allow_namespaces")
_CHAOS_PARAMS = (
    "packet_loss_percent",
    "delay_ms",
    "delay_jitter_ms",
    "bandwidth_limit",
    "corrupt_percent",
    "duplicate_percent",
    "target_nats",
    "target_specific_pods",
    "allow_namespaces",
)


class FaultInjectionClient:
    """Synchronous client. `api_url` is like `http://localhost:8080` or `https://...`; `token`,
    when set, is sent as `Authorization: Bearer <token>`; `ca_file` (default: env
    `FAULTLINE_CA_FILE`) is the CA (PEM) an `https://` agent's certificate must chain to,
    else the system's roots."""

    def __init__(
        self,
        api_url: str = "http://localhost:8080",
        timeout: float = 30.0,
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
    ):
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ca_file = ca_file or os.environ.get("FAULTLINE_CA_FILE") or None
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout, headers=headers, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FaultInjectionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise FaultInjectionError(0, f"{self.api_url}: {e}") from e
        if resp.is_success:
            return resp.json()
        try:
            err = resp.json()["error"]
            raise FaultInjectionError(resp.status_code, err.get("message", ""), err.get("code", ""), err.get("field"))
        except (ValueError, KeyError, TypeError):
            raise FaultInjectionError(resp.status_code, resp.text) from None

    def health(self) -> bool:
        """Whether the API answers its health endpoint."""
        try:
            return self._call("GET", "/health").get("status") == "healthy"
        except FaultInjectionError:
            return False

    def inject_network_partition(
        self,
        partition_type: NetworkPartition = NetworkPartition.CUSTOM,
        source: Optional[str] = None,
        target: Optional[str] = None,
        mode: NetworkMode = NetworkMode.NETWORKPOLICY,
        duration: Optional[int] = None,
        namespace: Optional[str] = None,
        target_pod_prefix: Optional[str] = None,
        **parameters: Any,
    ) -> Fault:
        """Injects a network fault and returns it (its id in `.fault_id`).

        `parameters` are the API's: `block_nats`, `block_all_egress`, `block_ingress`,
        `block_specific_pods`, `allow_namespaces` (networkpolicy); `packet_loss_percent`,
        `delay_ms`, `delay_jitter_ms`, `bandwidth_limit`, `corrupt_percent`,
        `duplicate_percent`, `target_nats`, `target_specific_pods` (chaos_mesh). Only the ones
        given are sent; a parameter of the other mode is refused by the API.
        """
        if target_pod_prefix is None:
            raise FaultInjectionError(0, "target_pod_prefix is required", "invalid_field", "parameters.target_pod_prefix")
        known = set(_NETWORKPOLICY_PARAMS) | set(_CHAOS_PARAMS)
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise TypeError(f"unknown parameter(s): {', '.join(unknown)}")
        params: Dict[str, Any] = {"target_pod_prefix": target_pod_prefix}
        if namespace is not None:
            params["namespace"] = namespace
        params.update({k: v for k, v in parameters.items() if v is not None})
        body: Dict[str, Any] = {
            "partition_type": NetworkPartition(partition_type).value,
            "mode": NetworkMode(mode).value,
            "parameters": params,
        }
        if source is not None:
            body["source"] = source
        if target is not None:
            body["target"] = target
        if duration is not None:
            body["duration"] = duration
        return Fault.from_json(self._call("POST", "/api/v1/faults/network/inject", json=body))

    def recover_fault(self, fault_id: str) -> Fault:
        """Ends a fault now: the traffic is whole again when this returns."""
        return Fault.from_json(self._call("POST", f"/api/v1/faults/{fault_id}/recover"))

    def get_fault(self, fault_id: str) -> Fault:
        return Fault.from_json(self._call("GET", f"/api/v1/faults/{fault_id}"))

    def list_faults(self) -> List[Fault]:
        """Every fault the agent knows (active and recently ended), newest first."""
        return [Fault.from_json(f) for f in self._call("GET", "/api/v1/faults")["faults"]]

    def cleanup(self, namespace: str) -> Dict[str, Any]:
        """Recovers every fault of a namespace: `{"namespace", "cleaned", "fault_ids"}`."""
        return self._call("POST", "/api/v1/faults/network/cleanup", params={"namespace": namespace})
