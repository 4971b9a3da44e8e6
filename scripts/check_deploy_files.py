#!/usr/bin/env python3
"""Consistency checks of deploy/ that no schema can make (scripts/check-deploy.sh runs them).

    check_deploy_files.py compose deploy/compose.yaml
        The file parses; every service has an image or a build whose context and Dockerfile
        exist; every bind-mounted path, dependency and Dockerfile COPY source exists.
    check_deploy_files.py dockerfiles CONTEXT Dockerfile...
        Every file that the Dockerfiles COPY from the build context exists there and is not
        excluded by the context's .dockerignore.
    check_deploy_files.py build-context CONTEXT Dockerfile DEST
        Copies what the Dockerfile's first stage (the build) COPYs from the context into the
        empty folder DEST, at the same paths, so that the build can be tried on exactly that
        (scripts/check-deploy.sh runs `cargo check` there).
    check_deploy_files.py prometheus-rule RULES.yml PROMETHEUSRULE.yaml [--write]
        The Kubernetes PrometheusRule holds exactly the groups of the Prometheus rule file
        (the alerts are written once, in the rule file); --write writes it from the rule file.
    check_deploy_files.py manifests RENDERED.yaml...
        In `kustomize build` output: each Deployment's terminationGracePeriodSeconds exceeds the
        pipeline.drain_timeout of the radiogate.toml it mounts (and of any environment override),
        its probes ask /healthz and /readyz on the port that telemetry.listen names, and a
        KEDA ScaledObject's maxReplicaCount is at least its minReplicaCount, its Kafka trigger
        names the workers' brokers by their full Service name.

Exit status 0 when everything checks, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import sys
import tomllib
from pathlib import Path

import yaml

DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "d": 86400,
}  # fmt: skip


def seconds(text: str) -> float:
    """A duration as radiogate (humantime) and compose write it: "30s", "1m 30s", "1m30s"."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or re.sub(r"[\d.\sa-z]", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def dockerfile_copies(dockerfile: Path) -> list[tuple[int, list[str], str]]:
    """COPY/ADD lines that copy from the build context (not --from a stage): the stage's
    index (0 for the first FROM), the sources and the destination."""
    copies = []
    stage = -1
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            stage += 1
        if len(words) < 3 or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        copies.append((stage, args[:-1], args[-1]))
    return copies


def dockerfile_sources(dockerfile: Path) -> list[str]:
    """Sources of COPY/ADD lines that copy from the build context (not --from a stage)."""
    return [source for _, sources, _ in dockerfile_copies(dockerfile) for source in sources]


def build_context(context: Path, dockerfile: Path, dest: Path) -> list[str]:
    """Copies the first stage's sources from `context` into `dest` at their own paths; a COPY
    that puts a source elsewhere (relative to the WORKDIR) is a problem, since the copy would
    then not be the build's tree."""
    problems = []
    for stage, sources, target in dockerfile_copies(dockerfile):
        if stage != 0:
            continue
        into_folder = target.endswith("/") or target == "." or len(sources) > 1
        for source in sources:
            placed = Path(target) / Path(source).name if into_folder else Path(target)
            if placed != Path(source):
                problems.append(f"{dockerfile}: COPY {source} {target} does not keep its path")
                continue
            origin, copy = context / source, dest / source
            copy.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, copy, dirs_exist_ok=True)
            else:
                shutil.copy2(origin, copy)
    return problems


def dockerignored(context: Path, source: str) -> bool:
    """Whether a .dockerignore pattern of `context` excludes `source` or a folder above it."""
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return False
    patterns = [p.strip().rstrip("/") for p in ignore.read_text(encoding="utf-8").splitlines()]
    parts = Path(source.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        if pattern and not pattern.startswith(("#", "!"))
        for prefix in prefixes
    )


def check_dockerfiles(context: Path, dockerfiles: list[Path]) -> list[str]:
    problems = []
    for dockerfile in dockerfiles:
        for source in dockerfile_sources(dockerfile):
            if not (context / source).exists():
                problems.append(f"{dockerfile}: copies {source}, which does not exist in {context}")
            elif dockerignored(context, source):
                problems.append(f"{dockerfile}: copies {source}, which {context / '.dockerignore'} excludes")
    return problems


def check_compose(path: Path) -> list[str]:
    problems: list[str] = []
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = path.parent
    services = doc.get("services") or {}
    if not services:
        return [f"{path}: no services"]
    for name, service in services.items():
        where = f"{path}: service {name}"
        build = service.get("build")
        if not service.get("image") and not build:
            problems.append(f"{where}: neither image nor build")
        if build:
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not context.is_dir():
                problems.append(f"{where}: build context {context} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{where}: Dockerfile {dockerfile} does not exist")
            else:
                problems += [f"{where}: {p}" for p in check_dockerfiles(context, [dockerfile])]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (base / source).exists():
                problems.append(f"{where}: mounts {source}, which does not exist")
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            if dependency not in services:
                problems.append(f"{where}: depends on {dependency}, which is not a service")
        if "stop_grace_period" in service:
            problems += grace_problems(where, seconds(service["stop_grace_period"]), service, base)
    return problems


def grace_problems(where: str, grace: float, service: dict, base: Path) -> list[str]:
    """stop_grace_period against the drain_timeout of the config the service mounts."""
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else ""
        if source.endswith(".toml"):
            config = tomllib.loads((base / source).read_text(encoding="utf-8"))
            drain = drain_timeout(config, service.get("environment") or {})
            if grace <= drain:
                return [f"{where}: stop_grace_period {grace:g}s is not above drain_timeout {drain:g}s"]
    return []


def drain_timeout(config: dict, env: dict) -> float:
    text = env.get("RADIOGATE__PIPELINE__DRAIN_TIMEOUT") or config.get("pipeline", {}).get("drain_timeout", "30s")
    return seconds(text)


def check_manifests(paths: list[Path]) -> list[str]:
    problems: list[str] = []
    docs = [d for p in paths for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    workers_brokers: set[str] = set()
    if not deployments:
        problems.append(f"{', '.join(map(str, paths))}: no Deployment")
    for deployment in deployments:
        where = f"Deployment {deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            workers_brokers.add(env.get("RADIOGATE__SOURCE__BROKERS", ""))
            config = None
            for mount in container.get("volumeMounts", []):
                data = config_maps.get(volumes.get(mount["name"]) or "", {})
                if "radiogate.toml" in data:
                    config = tomllib.loads(data["radiogate.toml"])
            if config is None:
                problems.append(f"{where}: mounts no ConfigMap with radiogate.toml")
                continue
            drain = drain_timeout(config, env)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= drain:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} is not above drain_timeout {drain:g}s")
            listen = env.get("RADIOGATE__TELEMETRY__LISTEN") or config.get("telemetry", {}).get("listen", "")
            port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = container.get(probe, {}).get("httpGet")
                if not get:
                    problems.append(f"{where}: no {probe} with httpGet")
                    continue
                probe_port = ports.get(get["port"], get["port"])
                if get.get("path") != path or probe_port != port:
                    problems.append(
                        f"{where}: {probe} asks {get.get('path')} on port {probe_port}; "
                        f"the worker serves {path} on telemetry.listen {listen!r}"
                    )
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        spec = scaled["spec"]
        if spec.get("maxReplicaCount", 100) < spec.get("minReplicaCount", 0):
            problems.append(f"ScaledObject {scaled['metadata']['name']}: maxReplicaCount below minReplicaCount")
        for trigger in spec.get("triggers", []):
            servers = trigger.get("metadata", {}).get("bootstrapServers", "")
            if trigger.get("type") != "kafka":
                continue
            # KEDA's operator resolves the name in its own namespace.
            if any("." not in host.rsplit(":", 1)[0] for host in servers.split(",")):
                problems.append(
                    f"ScaledObject {scaled['metadata']['name']}: bootstrapServers {servers!r} is not a "
                    "full Service name (<service>.<namespace>.svc): KEDA connects from its own namespace"
                )
            if servers not in workers_brokers:
                problems.append(
                    f"ScaledObject {scaled['metadata']['name']}: bootstrapServers {servers!r} is not "
                    f"the workers' RADIOGATE__SOURCE__BROKERS ({', '.join(sorted(workers_brokers))})"
                )
    return problems


PROMETHEUS_RULE_HEADER = """\
# Generated from deploy/prometheus/radiogate.rules.yml, whose alerts, runbooks and unit tests it
# carries for the prometheus-operator: do not edit; after changing the rules run
#   python3 scripts/check_deploy_files.py prometheus-rule deploy/prometheus/radiogate.rules.yml \\
#     deploy/k8s/base/prometheusrule.yaml --write
# (scripts/check-deploy.sh checks the two agree).
"""


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, as the rule file has them."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def prometheus_rule(rules: Path) -> dict:
    """The PrometheusRule resource holding the rule file's groups."""
    groups = yaml.safe_load(rules.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "radiogate"},
        "spec": {"groups": groups},
    }


def check_prometheus_rule(rules: Path, resource: Path, write: bool) -> list[str]:
    expected = prometheus_rule(rules)
    if write:
        text = yaml.dump(expected, Dumper=_BlockDumper, sort_keys=False, width=1000, allow_unicode=True)
        resource.write_text(PROMETHEUS_RULE_HEADER + text, encoding="utf-8")
    if yaml.safe_load(resource.read_text(encoding="utf-8")) != expected:
        return [f"{resource}: not the groups of {rules}; regenerate it with --write"]
    return []


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "compose":
        problems = check_compose(Path(argv[1]))
    elif len(argv) >= 3 and argv[0] == "dockerfiles":
        problems = check_dockerfiles(Path(argv[1]), [Path(a) for a in argv[2:]])
    elif len(argv) == 4 and argv[0] == "build-context":
        problems = build_context(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    elif len(argv) in (3, 4) and argv[0] == "prometheus-rule" and argv[3:] in ([], ["--write"]):
        problems = check_prometheus_rule(Path(argv[1]), Path(argv[2]), write=argv[3:] == ["--write"])
    elif len(argv) >= 2 and argv[0] == "manifests":
        problems = check_manifests([Path(a) for a in argv[1:]])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"check_deploy_files: {argv[0]}: {'FAILED' if problems else 'ok'} ({', '.join(argv[1:])})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
