"""Checks deploy/ with maintained validators; prints one JSON document.

    python tests/lib/check_deploy.py DEPLOY_DIR

- The Compose file: YAML (merge keys resolved, as Compose does), then the
  Compose specification's own parser (the `compose-spec` package, strict:
  unknown keys and values are errors).
- Every Kubernetes manifest: the API schemas of `kubernetes-validate`,
  strict (unknown fields are errors).
- The ConfigMap's files are deploy/config/'s, byte for byte.
- ClickHouse's XML files are well-formed.

Exits 1 naming each problem. On success prints {"commands": [...],
"images": [...]}: every `tillwatch` command line the deployment runs
(Compose `command:` and container `args:` of the tillwatch image), for the
caller to check against the binary.
"""

import json
import pathlib
import sys
import xml.etree.ElementTree as ET

import kubernetes_validate
import yaml
from compose_spec import PyCompose

KUBERNETES = "1.37.0"
TILLWATCH_IMAGE = "tillwatch:latest"


def check_compose(path, problems, commands, images):
    doc = yaml.safe_load(path.read_text())
    try:
        PyCompose.from_json(json.dumps(doc))
    except ValueError as e:
        problems.append(f"{path}: {e}")
        return
    for name, service in doc.get("services", {}).items():
        images.append(service.get("image", ""))
        if service.get("image") == TILLWATCH_IMAGE:
            if "command" not in service:
                problems.append(f"{path}: service {name} runs the tillwatch image without a command")
            else:
                commands.append({"where": f"{path.name} service {name}", "args": service["command"]})
        build = service.get("build")
        if isinstance(build, dict):
            dockerfile = (path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
            if not dockerfile.is_file():
                problems.append(f"{path}: service {name} builds from {dockerfile}, which is missing")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not (path.parent / source).exists():
                    problems.append(f"{path}: service {name} mounts {source}, which is missing")
    for name, secret in doc.get("secrets", {}).items():
        if "file" in secret and not secret["file"].startswith("./secrets/"):
            problems.append(f"{path}: secret {name} must come from deploy/secrets/ (not committed)")


def check_manifests(directory, config_dir, problems, commands, images):
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            where = f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {str(e).splitlines()[0]}")
                continue
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "tillwatch-config":
                for name, text in doc["data"].items():
                    source = config_dir / name
                    if not source.is_file():
                        problems.append(f"{where}: {name} is not a file of deploy/config/")
                    elif source.read_text() != text:
                        problems.append(f"{where}: {name} differs from deploy/config/{name}")
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
            for container in (pod or {}).get("containers", []):
                images.append(container.get("image", ""))
                if container.get("image") == TILLWATCH_IMAGE:
                    commands.append({"where": f"{where} container {container['name']}", "args": container.get("args", [])})
                    if doc["kind"] in ("Deployment", "StatefulSet"):
                        for probe, endpoint in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                            got = container.get(probe, {}).get("httpGet", {}).get("path")
                            if got != endpoint:
                                problems.append(f"{where}: {probe} should ask {endpoint}, asks {got}")
                        if "requests" not in container.get("resources", {}):
                            problems.append(f"{where}: no resource requests")


def main():
    deploy = pathlib.Path(sys.argv[1])
    problems, commands, images = [], [], []
    check_compose(deploy / "compose.yaml", problems, commands, images)
    check_manifests(deploy / "k8s", deploy / "config", problems, commands, images)
    for path in sorted(deploy.glob("clickhouse/**/*.xml")):
        try:
            ET.parse(path)
        except ET.ParseError as e:
            problems.append(f"{path}: {e}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"commands": commands, "images": sorted(set(images))}))


if __name__ == "__main__":
    main()
