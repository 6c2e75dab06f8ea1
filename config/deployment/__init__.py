"""Deployment files: LlamaDeploy's deployment YAML, validated into frozen dataclasses.

Every file LlamaDeploy (v0.8.1, and v0.9's ``location``/``import-path``/``sync_policy``
spellings) documents is read as is, except where it would fail later anyway; those fail here,
with the field and the reason:

- ``docker`` sources (LlamaDeploy had no way to deploy them);
- a ``default-service`` that names no service (LlamaDeploy only warned);
- a service with a source but no ``path``/``import-path`` (LlamaDeploy failed at deploy time);
- unknown keys, so that a typo does not silently fall back to a default.

A service may also carry a ``celeriac`` block of task controls (time limit, queue timeout,
retries, concurrency cap), which LlamaDeploy does not have; see ``controls``.

The parts: ``spec`` (the dataclasses), ``controls`` (a service's task controls), ``rules``
(checks of single fields), ``schema`` (the marshmallow schemas that build the spec) and
``loading`` (YAML in, errors by field path out).
"""

from config.deployment.controls import ConcurrencyLimit, RetryPolicy, ServiceControls
from config.deployment.layout import SourceLayout
from config.deployment.loading import (
    load_deployment,
    load_deployment_file,
    load_deployment_mapping,
)
from config.deployment.reading import YamlLimits
from config.deployment.schema import MESSAGE_QUEUE_TYPES
from config.deployment.spec import (
    SYNC_POLICIES,
    UI_SERVICE_ID,
    ControlPlaneSpec,
    DeploymentSpec,
    MessageQueueSpec,
    ServiceSpec,
    SourceSpec,
    SourceType,
)

__all__ = [
    "MESSAGE_QUEUE_TYPES",
    "SYNC_POLICIES",
    "UI_SERVICE_ID",
    "ConcurrencyLimit",
    "ControlPlaneSpec",
    "DeploymentSpec",
    "MessageQueueSpec",
    "RetryPolicy",
    "ServiceControls",
    "ServiceSpec",
    "SourceLayout",
    "SourceSpec",
    "SourceType",
    "YamlLimits",
    "load_deployment",
    "load_deployment_file",
    "load_deployment_mapping",
]
