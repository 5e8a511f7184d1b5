"""kubepim: Privileged Identity Management for Kubernetes.

Engineers are made eligible for roles (RoleEligibility); they ask for one with an AccessRequest;
approvers approve; the operator grants a real RoleBinding that disappears at expiry.

Layers (enforced by import-linter, see pyproject.toml):
    api/        pydantic models of the custom resources
    domain/     pure decisions; no kopf, no kubernetes client; time is an argument
    k8s/        the only code that talks to the API server
    handlers/   kopf handlers and admission webhooks: glue from events to domain to k8s
    devcluster/ a local control plane for development and tests; never imported by the operator
"""
