#!/usr/bin/env python3
"""Offline JSON schemas for kubeconform (scripts/check-deploy.sh), from package registries only.

    deploy_schemas.py kubernetes WHEEL VERSION OUT   # Kubernetes kinds, from kubernetes-validate
    deploy_schemas.py crd OUT CRD.yaml...             # custom resources, from their CRD files

`kubernetes`: the PyPI wheel `kubernetes-validate` bundles the Kubernetes JSON schemas of each
release (`kubernetes-json-schema/vX.Y.Z-local-strict/`, strict: no unknown fields). Each kind's
file refers to the shared definitions by an absolute URL and declares a remote `$id`; both are
rewritten so that `<kind>-<group>-<version>.json` resolves `_definitions.json` beside it, which
is the layout of kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` template.

`crd`: each served version of a CustomResourceDefinition becomes
`OUT/<group>/<kind>_<version>.json` (kubeconform's `{{ .Group }}/{{ .ResourceKind }}_{{
.ResourceAPIVersion }}.json`), the way kubeconform's openapi2jsonschema does it: OpenAPI's
`nullable` and `x-kubernetes-int-or-string` turned into JSON-schema types, and every object
that lists its properties closed to others (strict), unless it says
`x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import yaml


def kubernetes(wheel: Path, version: str, out: Path) -> int:
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not name.startswith(prefix) or not name.endswith(".json"):
                continue
            text = z.read(name).decode("utf-8").replace('"/api/_definitions.json#', '"_definitions.json#')
            doc = json.loads(text)
            doc.pop("$id", None)
            (out / name[len(prefix) :]).write_text(json.dumps(doc), encoding="utf-8")
            count += 1
    if count == 0:
        raise SystemExit(f"deploy_schemas: {wheel} has no schemas for Kubernetes v{version}")
    return count


def openapi_to_jsonschema(node: object, strict: bool = True) -> object:
    """OpenAPI v3 (as in CRDs) to JSON schema; `strict` closes objects with listed properties."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item, strict) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key in ("allOf", "anyOf", "oneOf", "not"):
            # Branches constrain the same object; closing one would reject the others' fields.
            out[key] = openapi_to_jsonschema(value, strict=False)
        elif key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: openapi_to_jsonschema(v) for k, v in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        strict
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd(out: Path, files: list[Path]) -> int:
    count = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            group, kind = spec["group"], spec["names"]["kind"].lower()
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if not schema or not version.get("served", True):
                    continue
                target = out / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(openapi_to_jsonschema(schema)), encoding="utf-8")
                count += 1
    if count == 0:
        raise SystemExit(f"deploy_schemas: no CustomResourceDefinition schema in {', '.join(map(str, files))}")
    return count


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "kubernetes":
        n = kubernetes(Path(argv[1]), argv[2].lstrip("v"), Path(argv[3]))
    elif len(argv) >= 3 and argv[0] == "crd":
        n = crd(Path(argv[1]), [Path(a) for a in argv[2:]])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(f"deploy_schemas: {argv[0]}: {n} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
