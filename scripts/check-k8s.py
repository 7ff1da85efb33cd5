"""Checks deploy/k8s offline: every manifest against its schema, then the references between them.

Core kinds are checked strictly (unknown fields are errors) against the Kubernetes OpenAPI schemas that
kubernetes-validate ships; the InferencePool against deploy/k8s/schemas/inferencepool-v1.json. Then what a schema
cannot see: the selectors match the pod template's labels, the ports and probes name ports the container has, the
InferencePool targets the container's port, the autoscaler scales this Deployment, the claim exists.

    scripts/check-k8s.sh            # what `make test` runs
    python check-k8s.py --self-test # also shows that broken manifests are refused
"""

import copy
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "k8s"
KUBERNETES = "1.37.0"
CUSTOM = {("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-v1.json"}


def schema_errors(doc):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CUSTOM:
        schema = json.loads((MANIFESTS / "schemas" / CUSTOM[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]}"]
    return []


def reference_errors(docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    errors = []
    deployments = by_kind.get("Deployment", {})
    if not deployments:
        return ["no Deployment"]
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        selected = lambda sel: sel and all(labels.get(k) == v for k, v in sel.items())
        if not selected(dep["spec"]["selector"].get("matchLabels")):
            errors.append(f"Deployment {name}: its selector does not match its pod template's labels")
        ports = {}
        for c in pod["spec"]["containers"]:
            for p in c.get("ports", []):
                ports[p["containerPort"]] = p
                if "name" in p:
                    ports[p["name"]] = p
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get and get["port"] not in ports:
                    errors.append(f"Deployment {name}: {probe} uses port {get['port']!r}, which the container lacks")
            if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/health":
                errors.append(f"Deployment {name}: readiness is not on /health")
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes", [])
                  if "persistentVolumeClaim" in v}
        for claim in claims - set(by_kind.get("PersistentVolumeClaim", {})):
            errors.append(f"Deployment {name}: claim {claim} is not among the manifests")
        for sname, svc in by_kind.get("Service", {}).items():
            if not selected(svc["spec"].get("selector")):
                errors.append(f"Service {sname}: its selector matches no Deployment's pods")
                continue
            for p in svc["spec"]["ports"]:
                if p.get("targetPort", p["port"]) not in ports:
                    errors.append(f"Service {sname}: targetPort {p.get('targetPort')!r} is not a container port")
        for pname, pool in by_kind.get("InferencePool", {}).items():
            if not selected(pool["spec"]["selector"]["matchLabels"]):
                errors.append(f"InferencePool {pname}: its selector matches no Deployment's pods")
            for p in pool["spec"]["targetPorts"]:
                if p["number"] not in ports:
                    errors.append(f"InferencePool {pname}: target port {p['number']} is not a container port")
    for hname, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in deployments:
            errors.append(f"HorizontalPodAutoscaler {hname}: scales {ref['kind']} {ref['name']}, not among the manifests")
    return errors


def check(docs):
    errors = []
    for d in docs:
        errors += [f"{d.get('kind')} {d.get('metadata', {}).get('name')}: {e}" for e in schema_errors(d)]
    return errors or reference_errors(docs)


def load():
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def self_test(docs):
    """Each of these breaks the manifests in one way; the check must refuse every one."""

    def edit(kind, change):
        out = copy.deepcopy(docs)
        change(next(d for d in out if d["kind"] == kind))
        return out

    container = lambda d: d["spec"]["template"]["spec"]["containers"][0]
    broken = {
        "an unknown container field": edit("Deployment", lambda d: container(d).update(readinessPath="/health")),
        "a probe on a missing port": edit("Deployment", lambda d: container(d)["readinessProbe"]["httpGet"].update(port="web")),
        "a pool port out of range": edit("InferencePool", lambda d: d["spec"]["targetPorts"][0].update(number=0)),
        "a pool field the CRD lacks": edit("InferencePool", lambda d: d["spec"].update(targetPortNumber=3000)),
        "a pool on the wrong port": edit("InferencePool", lambda d: d["spec"]["targetPorts"][0].update(number=8000)),
        "a picker without a port": edit("InferencePool", lambda d: d["spec"]["endpointPickerRef"].pop("port")),
        "a Service selecting no pod": edit("Service", lambda d: d["spec"]["selector"].update(app="other")),
        "an autoscaler on another Deployment": edit("HorizontalPodAutoscaler",
                                                     lambda d: d["spec"]["scaleTargetRef"].update(name="other")),
        "a metric target of the wrong type": edit("HorizontalPodAutoscaler",
                                                  lambda d: d["spec"]["metrics"][0]["pods"]["target"].update(type=4)),
    }
    missed = [what for what, bad in broken.items() if not check(bad)]
    for what, bad in broken.items():
        print(f"  refused {what}: {check(bad)[0]}" if what not in missed else f"  MISSED {what}")
    return missed


def main():
    docs = load()
    errors = check(docs)
    for e in errors:
        print(f"deploy/k8s: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    kinds = ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in docs)
    print(f"deploy/k8s: valid against Kubernetes {KUBERNETES} and InferencePool v1: {kinds}")
    if "--self-test" in sys.argv and self_test(docs):
        sys.exit("deploy/k8s: the check let a broken manifest through")


if __name__ == "__main__":
    main()
