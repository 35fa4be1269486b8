#!/usr/bin/env python3
"""Validates what jam deploys with: docker-compose.yml against the Compose spec schema,
every Kubernetes manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict), the kustomizations, and that the dashboard, Prometheus and nginx configs name
only metrics and services that exist. Exits non-zero on the first class of problems."""

import glob
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.30.0"
errors = []


def err(msg):
    errors.append(msg)
    print("FAIL:", msg)


def compose():
    path = os.path.join(ROOT, "docker-compose.yml")
    doc = yaml.safe_load(open(path))
    schema = json.load(open(os.path.join(ROOT, "deploy/schemas/compose-spec.json")))
    v = jsonschema.Draft201909Validator(schema)
    for e in v.iter_errors(doc):
        err(f"docker-compose.yml: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    services = doc.get("services", {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if isinstance(vol, str) and vol.startswith("./"):
                host = vol.split(":")[0]
                if not os.path.exists(os.path.join(ROOT, host)):
                    err(f"docker-compose.yml: {name} mounts missing {host}")
        build = svc.get("build")
        if isinstance(build, dict) and not os.path.exists(os.path.join(ROOT, build.get("context", "."), build.get("dockerfile", "Dockerfile"))):
            err(f"docker-compose.yml: {name} builds from a missing Dockerfile")
        for dep in (svc.get("depends_on") or []):
            if dep not in services:
                err(f"docker-compose.yml: {name} depends on unknown {dep}")
    for want in ["redis", "postgres", "worker-1", "worker-2", "gateway-1", "gateway-2", "gateway-3", "nginx", "prometheus", "grafana"]:
        if want not in services:
            err(f"docker-compose.yml: no {want} service")
    return services


def kubernetes():
    base = os.path.join(ROOT, "k8s/base")
    kust = yaml.safe_load(open(os.path.join(base, "kustomization.yaml")))
    files = sorted(os.path.basename(f) for f in glob.glob(os.path.join(base, "*.yaml")) if not f.endswith("kustomization.yaml"))
    if sorted(kust["resources"]) != files:
        err(f"k8s/base/kustomization.yaml lists {sorted(kust['resources'])}, folder has {files}")
    kinds = set()
    for f in files:
        for doc in yaml.safe_load_all(open(os.path.join(base, f))):
            if not doc:
                continue
            kinds.add(doc["kind"])
            if doc["kind"] == "ServiceMonitor":
                # A CRD: not in the Kubernetes schemas; check what the operator needs.
                spec = doc.get("spec", {})
                if doc.get("apiVersion") != "monitoring.coreos.com/v1" or not spec.get("selector") or not spec.get("endpoints"):
                    err(f"{f}: ServiceMonitor needs apiVersion monitoring.coreos.com/v1, selector and endpoints")
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                err(f"k8s/base/{f}: {doc['kind']}/{doc['metadata']['name']}: {e}")
    for want in ["Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget", "Ingress", "ServiceMonitor", "StatefulSet"]:
        if want not in kinds:
            err(f"k8s/base has no {want}")
    for overlay in glob.glob(os.path.join(ROOT, "k8s/overlays/*/kustomization.yaml")):
        k = yaml.safe_load(open(overlay))
        d = os.path.dirname(overlay)
        for r in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            if not os.path.exists(os.path.join(d, r)):
                err(f"{overlay}: missing {r}")


def metric_names_in_code():
    names = set()
    for f in glob.glob(os.path.join(ROOT, "*/src/**/*.rs"), recursive=True):
        names.update(re.findall(r'"(jam_[a-z_]+)"', open(f).read()))
    return names


def dashboards(services):
    known = metric_names_in_code()
    dash = json.load(open(os.path.join(ROOT, "deploy/grafana/dashboards/jam.json")))
    for p in dash["panels"]:
        for t in p["targets"]:
            for m in re.findall(r"\bjam_[a-z_]+", t["expr"]):
                base = re.sub(r"_(bucket|count|sum)$", "", m)
                if base not in known:
                    err(f"dashboard panel '{p['title']}' uses unknown metric {m}")
    prom = yaml.safe_load(open(os.path.join(ROOT, "deploy/prometheus.yml")))
    for job in prom["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                if target.split(":")[0] not in services:
                    err(f"prometheus.yml scrapes unknown service {target}")
    nginx = open(os.path.join(ROOT, "deploy/nginx.conf")).read()
    for host in re.findall(r"server\s+([a-z0-9-]+):\d+", nginx):
        if host not in services:
            err(f"nginx.conf proxies to unknown service {host}")
    if "proxy_set_header Upgrade" not in nginx:
        err("nginx.conf does not forward the WebSocket upgrade")


if __name__ == "__main__":
    services = compose()
    kubernetes()
    dashboards(services)
    if errors:
        print(f"{len(errors)} problem(s)")
        sys.exit(1)
    print("deploy: compose, kubernetes, dashboard, prometheus and nginx configs valid")
