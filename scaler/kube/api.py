"""The Kubernetes API adapter: authentication and read-only GETs with a timeout.

Auth: an explicit kubeconfig (and context) when configured; otherwise the pod's service account
when running in a cluster (KUBERNETES_SERVICE_HOST set), else the default kubeconfig. Every request
goes through `get(path, **query)`, which returns the decoded JSON object or raises `KubeError`
naming the path and the status (403 forbidden, 404 not found, 0 for timeouts and connection errors).
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from scaler.config import KubernetesConfig


class KubeError(Exception):
    def __init__(self, path: str, status: int, reason: str) -> None:
        self.path, self.status, self.reason = path, status, reason
        what = {403: "forbidden (check the RBAC in manifests/base)", 404: "not found"}.get(status, reason)
        super().__init__(f"GET {path}: {status or 'no answer'} {what}".rstrip())


class KubeApi:
    """Read-only access to the API server at `configuration.host`."""

    def __init__(self, configuration: k8s.Configuration, timeout: float) -> None:
        configuration.retries = 0  # one attempt per poll: the next poll is the retry
        self.client = k8s.ApiClient(configuration)
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg: KubernetesConfig) -> "KubeApi":
        configuration = k8s.Configuration()
        if cfg.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=cfg.kubeconfig, context=cfg.context,
                                        client_configuration=configuration)
        return cls(configuration, cfg.timeout)

    @classmethod
    def at(cls, host: str, timeout: float = 5.0, token: str | None = None) -> "KubeApi":
        """An API at a plain URL (tests, `kubectl proxy`)."""
        configuration = k8s.Configuration(host=host)
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(configuration, timeout)

    def get(self, path: str, **query: str) -> dict[str, Any]:
        method, url, headers, body, post = self.client.param_serialize(
            method="GET", resource_path=path, query_params=list(query.items()) or None,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )
        try:
            resp = self.client.call_api(method, url, header_params=headers, _request_timeout=self.timeout)
            resp.read()
        except ApiException as e:
            raise KubeError(path, e.status or 0, e.reason or "error") from None
        except Exception as e:  # timeouts, refused connections, TLS errors: one kind of failure
            raise KubeError(path, 0, _network_reason(e, self.timeout)) from None
        if not 200 <= resp.status < 300:
            raise KubeError(path, resp.status, resp.reason or "error")
        try:
            obj = json.loads(resp.data)
        except (TypeError, ValueError) as e:
            raise KubeError(path, resp.status, f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise KubeError(path, resp.status, "not a JSON object")
        return obj

    def close(self) -> None:
        self.client.close()


def _network_reason(e: Exception, timeout: float) -> str:
    cause = getattr(e, "reason", None) or e  # urllib3 wraps the cause in MaxRetryError.reason
    name = type(cause).__name__
    if "Timeout" in name:
        return f"timed out after {timeout:g}s"
    if "NewConnection" in name or isinstance(cause, ConnectionError):
        return "connection refused or unreachable"
    return f"{name}: {cause}"
