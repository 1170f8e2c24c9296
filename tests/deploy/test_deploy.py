"""Offline checks of the deployment files: Dockerfiles, OpenShift templates, bucket policies, docs.

No cluster and no container engine: each template is rendered the way `oc process` does and
every object is validated against the Kubernetes API schemas shipped by `kubernetes-validate`
(OpenShift kinds get a structural check). CronJob environments are compared with what the
binaries themselves say they read (`<bin> --list-env`, from ${EGRESS_BIN_DIR:-target/debug}).

    python3 -m venv /opt/egress-py && /opt/egress-py/bin/pip install -r tests/deploy/requirements.txt
    cargo build -p egress-dump -p egress-sync
    /opt/egress-py/bin/python -m pytest tests/deploy -q

A missing tool (hadolint, cargo, a binary, a Python package) fails the test that needs it.
"""

import json
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

try:
    import yaml
except ImportError:  # reported by the tests that need it
    yaml = None
try:
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None

REPO = Path(__file__).resolve().parents[2]

# Kubernetes versions to validate against: OpenShift 4.16 (1.29), 1.33 (backoffLimitPerIndex
# GA, which the Indexed Jobs use) and the newest schemas shipped.
K8S_VERSIONS = ["1.29", "1.33", "latest"]

# Facts of the original deployment that the templates must keep (names, keys, parameters).
SIDES = {
    "dump": {
        "dir": "openshift-crc",
        "binary": "egress-dump",
        "dockerfile": "Dockerfile.dump",
        "deploy_values": {"S3_OUTPUT": "s3://egress-test/dump", "TABLES": "table1 table2"},
        "setup_values": {
            "DATABASE_USER": "egress",
            "DATABASE_PASSWORD": "secret",
            "DATABASE_NAME": "app",
            "AWS_ACCESS_KEY_ID": "AKIATEST",
            "AWS_SECRET_ACCESS_KEY": "testsecret",
        },
        "secret_env": {
            "PGUSER": ("postgresql", "database-user"),
            "PGPASSWORD": ("postgresql", "database-password"),
            "PGDATABASE": ("postgresql", "database-name"),
            "AWS_ACCESS_KEY_ID": ("aws", "access-key-id"),
            "AWS_SECRET_ACCESS_KEY": ("aws", "secret-access-key"),
        },
        # parameter -> (default or None when it must be given, plain env var it feeds or None)
        "parameters": {
            "S3_OUTPUT": (None, "S3_OUTPUT"),
            "TABLES": (None, "TABLES"),
            "PGHOST": ("postgresql", "PGHOST"),
            "PGPORT": ("5432", "PGPORT"),
            # Empty: verify-full when a CA bundle is mounted (PG_CA_NAME), else prefer.
            "PGSSLMODE": ("", "PGSSLMODE"),
            "PG_CA_NAME": ("postgresql-ca", None),
            "COMPRESSION_LEVEL": ("6", "COMPRESSION_LEVEL"),
            "DUMP_JOBS": ("1", "DUMP_JOBS"),
            "DUMP_FORMAT": ("csv", "DUMP_FORMAT"),
            "SHARDS": ("1", "SHARDS"),
            "SCHEDULE": ("@daily", None),
            "IMAGE": ("egress-is:latest", None),
            "PUSHGATEWAY_URL": ("", "PUSHGATEWAY_URL"),
            "GIT_URI": (None, None),
            "GIT_REF": (None, None),
        },
    },
    "sync": {
        "dir": "openshift-dh",
        "binary": "egress-sync",
        "dockerfile": "Dockerfile.sync",
        "deploy_values": {},
        "setup_values": {
            "INPUT_URL": "https://s3.amazonaws.com",
            "INPUT_PATH": "egress-test/dump",
            "INPUT_ACCESS_KEY_ID": "AKIATEST",
            "INPUT_SECRET_ACCESS_KEY": "testsecret",
            "OUTPUT_URL": "https://ceph.example.test",
            "OUTPUT_PATH": "dh-bucket/egress",
            "OUTPUT_ACCESS_KEY_ID": "cephkey",
            "OUTPUT_SECRET_ACCESS_KEY": "cephsecret",
        },
        "secret_env": {
            f"{side}_{var}": (f"egress-{side.lower()}", key)
            for side in ("INPUT", "OUTPUT")
            for var, key in (
                ("URL", "url"),
                ("PATH", "path"),
                ("ACCESS_KEY_ID", "access-key-id"),
                ("SECRET_ACCESS_KEY", "secret-access-key"),
            )
        },
        "parameters": {
            "SCHEDULE": ("0 6 * * *", None),
            "REQUIRE_MANIFEST": ("true", "REQUIRE_MANIFEST"),
            "SHARES": ("1", "SHARES"),
            "ICEBERG": ("false", "ICEBERG"),
            "ICEBERG_WAREHOUSE": ("", "ICEBERG_WAREHOUSE"),
            "ICEBERG_NAMESPACE": ("egress", "ICEBERG_NAMESPACE"),
            "ICEBERG_CATALOG_NAME": ("egress", "ICEBERG_CATALOG_NAME"),
            "IMAGE": ("egress-is:latest", None),
            "PUSHGATEWAY_URL": ("", "PUSHGATEWAY_URL"),
            "GIT_URI": (None, None),
            "GIT_REF": (None, None),
        },
    },
}

SIDE_NAMES = sorted(SIDES)


# ---------------------------------------------------------------------------------------------
# Tools


def need_yaml():
    if yaml is None:
        pytest.fail("PyYAML is not installed: pip install -r tests/deploy/requirements.txt")
    return yaml


def need_kubernetes_validate():
    if kubernetes_validate is None:
        pytest.fail("kubernetes-validate is not installed: pip install -r tests/deploy/requirements.txt")
    return kubernetes_validate


def find_tool(name):
    """A tool from the venv running pytest (even when not activated), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


def bin_dir():
    d = Path(os.environ.get("EGRESS_BIN_DIR", "target/debug"))
    return d if d.is_absolute() else REPO / d


def list_env(binary):
    """{NAME: required?} as printed by `<binary> --list-env`."""
    path = bin_dir() / binary
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it with `cargo build -p {binary}` (or set EGRESS_BIN_DIR)")
    proc = subprocess.run([str(path), "--list-env"], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{binary} --list-env` exited {proc.returncode}: {out.strip()}"
    listing = {}
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"([A-Z][A-Z0-9_]*)\t(required|optional)", line)
        assert m, f"`{binary} --list-env` printed an unexpected line: {line!r}"
        listing[m.group(1)] = m.group(2) == "required"
    assert listing, f"`{binary} --list-env` listed no variables"
    return listing


# ---------------------------------------------------------------------------------------------
# `oc process`, offline

PARAM_NAME = re.compile(r"^[a-zA-Z0-9_]+$")
STRING_REF = re.compile(r"\$\{([a-zA-Z0-9_]+)\}")
NONSTRING_REF = re.compile(r"^\$\{\{([a-zA-Z0-9_]+)\}\}$")


class ProcessError(Exception):
    pass


def generate(expression, rng=random.Random(0)):
    """Values for `generate: expression` parameters, as oc's generator reads `from`."""
    classes = {
        r"\w": string.ascii_letters + string.digits + "_",
        r"\d": string.digits,
        r"\a": string.ascii_letters,
        r"\A": string.punctuation,
    }
    out, i = [], 0
    while i < len(expression):
        if expression[i] == "[":
            end = expression.index("]", i)
            body, i, chars = expression[i + 1 : end], end + 1, ""
            j = 0
            while j < len(body):
                if body[j : j + 2] in classes:
                    chars += classes[body[j : j + 2]]
                    j += 2
                elif j + 2 < len(body) and body[j + 1] == "-":
                    chars += "".join(chr(c) for c in range(ord(body[j]), ord(body[j + 2]) + 1))
                    j += 3
                else:
                    chars += body[j]
                    j += 1
        elif expression[i : i + 2] in classes:
            chars, i = classes[expression[i : i + 2]], i + 2
        elif expression[i] == "\\":
            chars, i = expression[i + 1], i + 2
        else:
            chars, i = expression[i], i + 1
        count = 1
        m = re.match(r"\{(\d+)\}", expression[i:])
        if m:
            count, i = int(m.group(1)), i + m.end()
        out.extend(rng.choice(chars) for _ in range(count))
    return "".join(out)


def parameter_values(template, given):
    params = template.get("parameters") or []
    names = [p.get("name") for p in params]
    for name in names:
        if not isinstance(name, str) or not PARAM_NAME.match(name):
            raise ProcessError(f"invalid parameter name {name!r}")
    if len(set(names)) != len(names):
        raise ProcessError(f"duplicate parameter names in {names}")
    unknown = set(given) - set(names)
    if unknown:
        raise ProcessError(f"unknown parameter name(s): {sorted(unknown)}")
    values = {}
    for p in params:
        name = p["name"]
        if name in given:
            value = given[name]
        elif p.get("generate"):
            if p["generate"] != "expression":
                raise ProcessError(f"{name}: unknown generator {p['generate']!r}")
            value = generate(p["from"])
        else:
            value = p.get("value", "")
        if not isinstance(value, str):
            raise ProcessError(f"{name}: a parameter value must be a string, got {value!r}")
        if p.get("required") and value == "":
            raise ProcessError(f"parameter {name} is required and must be specified")
        values[name] = value
    return values


def substitute(node, values):
    if isinstance(node, dict):
        return {k: substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, values) for v in node]
    if isinstance(node, str):
        m = NONSTRING_REF.match(node)
        if m and m.group(1) in values:
            try:
                return json.loads(values[m.group(1)])
            except ValueError:
                return values[m.group(1)]
        node = re.sub(r"\$\{\{([a-zA-Z0-9_]+)\}\}", lambda m: values.get(m.group(1), m.group(0)), node)
        return STRING_REF.sub(lambda m: values.get(m.group(1), m.group(0)), node)
    return node


def process(template, given):
    """The object list `oc process` would print for `template` with `-p` values `given`."""
    if template.get("apiVersion") != "template.openshift.io/v1" or template.get("kind") != "Template":
        raise ProcessError("not a template.openshift.io/v1 Template")
    values = parameter_values(template, given)
    labels = template.get("labels") or {}
    objects = []
    for obj in template.get("objects") or []:
        obj = substitute(obj, values)
        if labels:
            meta = obj.setdefault("metadata", {})
            meta["labels"] = {**labels, **(meta.get("labels") or {})}
        objects.append(obj)
    leftovers = [s for s in strings(objects) if "${" in s]
    if leftovers:
        raise ProcessError(f"unresolved parameter references: {leftovers}")
    return objects


def strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def load(path):
    with open(REPO / path) as f:
        return need_yaml().safe_load(f)


def template(side, which):
    return load(f"{SIDES[side]['dir']}/{which}.yaml")


def rendered(side, which, **extra):
    values = dict(SIDES[side][f"{which}_values"], **extra)
    return process(template(side, which), values)


def by_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def cronjob(side):
    jobs = by_kind(rendered(side, "deploy"), "CronJob")
    assert len(jobs) == 1, f"{side}: expected one CronJob, found {len(jobs)}"
    return jobs[0]


def pod_spec(cj):
    return cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------
# The renderer itself


def test_renderer_substitutes_like_oc_process():
    t = {
        "apiVersion": "template.openshift.io/v1",
        "kind": "Template",
        "metadata": {"name": "t"},
        "labels": {"app": "x"},
        "objects": [{"kind": "K", "metadata": {"name": "${A}-n"}, "n": "${{N}}", "s": "${N}", "b": "${{B}}"}],
        "parameters": [
            {"name": "A", "required": True},
            {"name": "N", "value": "5"},
            {"name": "B", "value": "true"},
            {"name": "G", "generate": "expression", "from": "[a-z0-9]{12}"},
        ],
    }
    (obj,) = process(t, {"A": "a"})
    assert obj == {"kind": "K", "metadata": {"name": "a-n", "labels": {"app": "x"}}, "n": 5, "s": "5", "b": True}
    with pytest.raises(ProcessError, match="required"):
        process(t, {})
    with pytest.raises(ProcessError, match="unknown parameter"):
        process(t, {"A": "a", "NOPE": "1"})
    assert re.fullmatch(r"[a-z0-9]{12}", parameter_values(t, {"A": "a"})["G"])
    assert re.fullmatch(r"x[A-Za-z]{3}\d{2}", generate(r"x\a{3}\d{2}"))
    t["objects"][0]["m"] = "${MISSING}"
    with pytest.raises(ProcessError, match="unresolved"):
        process(t, {"A": "a"})


# ---------------------------------------------------------------------------------------------
# Templates: parameters, rendering, schemas


TEMPLATES = [(side, which) for side in SIDE_NAMES for which in ("setup", "deploy")]


@pytest.mark.parametrize("side,which", TEMPLATES)
def test_template_is_well_formed(side, which):
    t = template(side, which)
    assert t.get("apiVersion") == "template.openshift.io/v1"
    assert t.get("kind") == "Template"
    assert t.get("metadata", {}).get("name"), "a Template needs metadata.name"
    assert isinstance(t.get("objects"), list) and t["objects"], "a Template needs objects"
    for p in t.get("parameters") or []:
        assert set(p) <= {"name", "displayName", "description", "value", "generate", "from", "required"}, p
        if "value" in p:
            assert isinstance(p["value"], str), f"{p['name']}: parameter values must be strings (quote them)"
        if "generate" in p:
            assert p["generate"] == "expression" and p.get("from"), p
    referenced = {m for s in strings(t["objects"]) for m in re.findall(r"\$\{\{?([a-zA-Z0-9_]+)\}", s)}
    declared = {p["name"] for p in t.get("parameters") or []}
    assert referenced <= declared, f"undeclared parameters: {sorted(referenced - declared)}"
    assert declared <= referenced, f"parameters never used: {sorted(declared - referenced)}"


@pytest.mark.parametrize("side,which", TEMPLATES)
def test_required_parameters_must_be_given(side, which):
    t = template(side, which)
    defaults = {p["name"] for p in t.get("parameters") or [] if p.get("value") or p.get("generate")}
    for name in sorted(set(SIDES[side][f"{which}_values"]) - defaults):
        values = dict(SIDES[side][f"{which}_values"])
        del values[name]
        with pytest.raises(ProcessError, match=f"parameter {name} is required"):
            process(t, values)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("side,which", TEMPLATES)
def test_objects_validate_against_kubernetes_schemas(side, which, version):
    kv = need_kubernetes_validate()
    if version == "latest":
        version = kv.utils.latest_version()
    objects = rendered(side, which)
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(set(names)) == len(names), f"duplicate objects: {names}"
    for obj in objects:
        if obj["apiVersion"].split("/")[0].endswith(".openshift.io"):
            check_openshift_object(obj, objects)
            continue
        try:
            kv.validate(obj, version, strict=True)
        except kv.utils.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}")
        except kv.utils.SchemaNotFoundError as e:
            pytest.fail(e.message)


QUANTITY = re.compile(r"^(\d+(\.\d+)?)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def quantity(q):
    m = QUANTITY.match(str(q))
    assert m, f"not a resource quantity: {q!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(3)]
    return float(m.group(1)) * scale


def check_openshift_object(obj, objects):
    """kubernetes-validate has no OpenShift schemas: check the fields these templates use."""
    meta = obj.get("metadata") or {}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")), meta
    kind, spec = obj.get("kind"), obj.get("spec")
    assert isinstance(spec, dict), f"{kind} needs a spec"
    if kind == "ImageStream":
        assert obj["apiVersion"] == "image.openshift.io/v1"
        assert set(spec) <= {"lookupPolicy", "tags", "dockerImageRepository"}, spec
        if "lookupPolicy" in spec:
            assert set(spec["lookupPolicy"]) == {"local"} and isinstance(spec["lookupPolicy"]["local"], bool)
    elif kind == "BuildConfig":
        assert obj["apiVersion"] == "build.openshift.io/v1"
        assert set(spec) <= {"triggers", "runPolicy", "source", "strategy", "output", "resources",
                             "postCommit", "completionDeadlineSeconds", "nodeSelector",
                             "successfulBuildsHistoryLimit", "failedBuildsHistoryLimit"}, spec
        assert spec.get("runPolicy", "Serial") in {"Serial", "Parallel", "SerialLatestOnly"}
        source = spec["source"]
        assert source.get("type") == "Git" and set(source) <= {"type", "git", "contextDir"}
        assert set(source["git"]) <= {"uri", "ref"} and source["git"].get("uri"), source
        strategy = spec["strategy"]
        assert strategy.get("type") == "Docker" and set(strategy) == {"type", "dockerStrategy"}, strategy
        dockerfile = strategy["dockerStrategy"].get("dockerfilePath")
        assert dockerfile and (REPO / dockerfile).is_file(), f"dockerfilePath {dockerfile!r} is not in the repo"
        to = spec["output"]["to"]
        assert to.get("kind") == "ImageStreamTag" and re.fullmatch(r"[a-z0-9-]+:[\w.-]+", to.get("name", "")), to
        streams = {o["metadata"]["name"] for o in by_kind(objects, "ImageStream")}
        assert to["name"].split(":")[0] in streams, f"output {to['name']} is no ImageStream of this template"
        for t in spec.get("triggers") or []:
            assert t.get("type") in {"ConfigChange", "ImageChange", "GitHub", "Generic", "GitLab", "Bitbucket"}, t
        res = spec.get("resources") or {}
        assert set(res) <= {"requests", "limits"}
        for group in res.values():
            assert set(group) <= {"cpu", "memory"}
            for q in group.values():
                quantity(q)
    else:
        pytest.fail(f"no check for OpenShift kind {kind}")


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_object_names_match_the_original(side):
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered(side, "deploy")}
    assert names == {("BuildConfig", "egress-bc"), ("ImageStream", "egress-is"), ("CronJob", "egress-cj")}


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_parameters_and_defaults(side):
    params = {p["name"]: p for p in template(side, "deploy")["parameters"]}
    for name, (default, _) in SIDES[side]["parameters"].items():
        assert name in params, f"parameter {name} missing"
        if default is not None:
            assert params[name].get("value") == default, f"{name} should default to {default!r}"
    for name in SIDES[side]["deploy_values"]:
        assert params[name].get("required") is True and not params[name].get("value"), name


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_git_uri_default_is_the_workspace_repository(side):
    with open(REPO / "Cargo.toml", "rb") as f:
        repository = tomllib.load(f)["workspace"]["package"]["repository"]
    params = {p["name"]: p for p in template(side, "deploy")["parameters"]}
    assert params["GIT_URI"].get("value") == repository


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_build_produces_the_image_the_cronjob_runs(side):
    objects = rendered(side, "deploy")
    (bc,) = by_kind(objects, "BuildConfig")
    (stream,) = by_kind(objects, "ImageStream")
    assert bc["spec"]["strategy"]["dockerStrategy"]["dockerfilePath"] == SIDES[side]["dockerfile"]
    assert any(t["type"] == "ConfigChange" for t in bc["spec"]["triggers"]), "build once on creation"
    image = pod_spec(cronjob(side))["containers"][0]["image"]
    assert image == bc["spec"]["output"]["to"]["name"] == f"{stream['metadata']['name']}:latest"
    # A short name like egress-is:latest resolves in pods only through the local lookup policy.
    assert stream["spec"]["lookupPolicy"]["local"] is True
    # ...and IMAGE can point elsewhere.
    other = process(template(side, "deploy"), dict(SIDES[side]["deploy_values"], IMAGE="quay.io/x/y:1"))
    assert pod_spec(by_kind(other, "CronJob")[0])["containers"][0]["image"] == "quay.io/x/y:1"


# ---------------------------------------------------------------------------------------------
# CronJobs


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_cronjob_scheduling_and_retries(side):
    cj = cronjob(side)
    assert cj["apiVersion"] == "batch/v1"
    spec = cj["spec"]
    # The values the README states: the dump at midnight UTC, the mirror six hours later;
    # never two at once; a failed run retried twice; three jobs of each outcome kept.
    assert spec["schedule"] == {"dump": "@daily", "sync": "0 6 * * *"}[side]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 3600
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    # An Indexed Job of SHARDS (dump) or SHARES (sync) pods (one by default), each index
    # retried twice on its own.
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 1
    assert job["backoffLimitPerIndex"] == 2 and "backoffLimit" not in job
    # A pod is replaced once failed, never while terminating (fewer pods of one index).
    assert job["podReplacementPolicy"] == "Failed"
    assert job["activeDeadlineSeconds"] == 21600
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    # Exit code 2 (usage/configuration) is not worth retrying.
    rules = job.get("podFailurePolicy", {}).get("rules", [])
    fail_at_once = [r for r in rules if r["action"] == "FailJob"]
    assert [r["onExitCodes"]["values"] for r in fail_at_once] == [[2, 3]], rules
    pods = {"dump": "SHARDS", "sync": "SHARES"}[side]
    custom = process(template(side, "deploy"),
                     dict(SIDES[side]["deploy_values"], SCHEDULE="30 2 * * *", ACTIVE_DEADLINE_SECONDS="600",
                          **{pods: "4"}))
    (cj,) = by_kind(custom, "CronJob")
    assert cj["spec"]["schedule"] == "30 2 * * *"
    job = cj["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 600
    assert job["completions"] == job["parallelism"] == 4
    env = {e["name"]: e.get("value") for e in job["template"]["spec"]["containers"][0]["env"]}
    assert env[pods] == "4" and "JOB_COMPLETION_INDEX" not in env
    kv = need_kubernetes_validate()
    for version in K8S_VERSIONS:
        version = kv.utils.latest_version() if version == "latest" else version
        kv.validate(cj, version, strict=True)


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_cronjob_security_context_is_restricted(side):
    pod = pod_spec(cronjob(side))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    # The only volume: the optional CA bundle, from a ConfigMap or a Secret, read-only.
    for volume in pod.get("volumes", []):
        sources = volume["projected"]["sources"]
        assert all(set(src) <= {"configMap", "secret"} for src in sources), volume
        assert all(v.get("optional") is True for src in sources for v in src.values()), volume
    for c in pod["containers"]:
        assert all(m.get("readOnly") is True for m in c.get("volumeMounts", [])), c
    assert len(pod["containers"]) == 1 and not pod.get("initContainers")
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged")
        assert "runAsUser" not in sc and "runAsUser" not in pod["securityContext"], \
            "leave the UID to OpenShift's SCC"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_cronjob_resources(side):
    (c,) = pod_spec(cronjob(side))["containers"]
    res = c["resources"]
    for kind in ("cpu", "memory"):
        request, limit = quantity(res["requests"][kind]), quantity(res["limits"][kind])
        assert 0 < request <= limit, f"{kind}: request {request} > limit {limit}"
    # Peak memory of a dump is well under 64 MiB; keep the limit modest but with headroom.
    assert 128 * 2**20 <= quantity(res["limits"]["memory"]) <= 1 * 2**30


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_cronjob_env_is_what_the_binary_reads(side):
    """Every variable set is one the binary reads; every variable it requires is set."""
    listing = list_env(SIDES[side]["binary"])
    (c,) = pod_spec(cronjob(side))["containers"]
    assert c["name"] == SIDES[side]["binary"]
    assert not c.get("envFrom"), "envFrom hides which variables are set; list them in env"
    env = c["env"]
    names = [e["name"] for e in env]
    assert len(set(names)) == len(names), f"duplicate env names: {names}"
    unknown = sorted(set(names) - set(listing))
    assert not unknown, f"{SIDES[side]['binary']} does not read {unknown}"
    surely_set = {
        e["name"] for e in env
        if e.get("value") or ("valueFrom" in e and not e["valueFrom"].get("secretKeyRef", {}).get("optional"))
    }
    missing = sorted(n for n, required in listing.items() if required and n not in surely_set)
    assert not missing, f"required by {SIDES[side]['binary']} but not (surely) set: {missing}"
    optional = {p["name"] for p in template(side, "deploy")["parameters"] if p.get("required") is False}
    for e in env:
        if "valueFrom" not in e and not e.get("value"):
            # Only a parameter documented as optional may leave its variable empty (the
            # binaries treat an empty variable as unset).
            assert e["value"] == "" and any(f"${{{p}}}" in str(e_raw(side, e["name"])) for p in optional), \
                f"{e['name']}: an empty value; leave the variable out instead"


def e_raw(side, name):
    """The env entry `name` as the template writes it (before parameters are filled in)."""
    raw = template(side, "deploy")
    (cj,) = [o for o in raw["objects"] if o["kind"] == "CronJob"]
    (c,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return next(e for e in c["env"] if e["name"] == name)


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_cronjob_env_from_secrets_and_parameters(side):
    (c,) = pod_spec(cronjob(side))["containers"]
    env = {e["name"]: e for e in c["env"]}
    for name, (secret, key) in SIDES[side]["secret_env"].items():
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret, key) and not ref.get("optional"), name
    given = {name: f"given-{name.lower()}" for name, (_, var) in SIDES[side]["parameters"].items() if var}
    objects = process(template(side, "deploy"), dict(SIDES[side]["deploy_values"], **given))
    (c,) = pod_spec(by_kind(objects, "CronJob")[0])["containers"]
    env = {e["name"]: e for e in c["env"]}
    for name, (_, var) in SIDES[side]["parameters"].items():
        if var:
            assert env[var].get("value") == given[name], f"{var} should carry parameter {name}"


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_setup_creates_every_secret_key_the_cronjob_reads(side):
    secrets = {o["metadata"]["name"]: o for o in by_kind(rendered(side, "setup"), "Secret")}
    (c,) = pod_spec(cronjob(side))["containers"]
    refs = [e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e]
    assert {r["name"] for r in refs} == set(secrets)
    for r in refs:
        assert r["key"] in secrets[r["name"]].get("stringData", {}), f"{r['name']} has no key {r['key']}"
    for name, secret in secrets.items():
        used = {r["key"] for r in refs if r["name"] == name}
        assert set(secret["stringData"]) == used, f"{name}: keys nobody reads: {set(secret['stringData']) - used}"
        assert secret.get("type") == "Opaque"


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_stages(path):
    """The stages of a Dockerfile, each FROM with its ARG defaults substituted (the bases
    are build arguments so that a test can supply stand-ins)."""
    stages, current, args = [], None, {}
    text = (REPO / path).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and current is None:
            name, _, default = rest.strip().partition("=")
            args[name] = default
        elif instr == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.strip())
            current = {"from": base, "lines": []}
            stages.append(current)
        else:
            assert current is not None, f"{path}: {instr} before FROM"
            current["lines"].append((instr, rest.strip()))
    return stages


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_hadolint_is_clean(side):
    hadolint = find_tool("hadolint")
    proc = subprocess.run([hadolint, "--no-color", SIDES[side]["dockerfile"]], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not report, f"hadolint:\n{report}"


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_dockerfile_shape(side):
    binary = SIDES[side]["binary"]
    build, runtime = dockerfile_stages(SIDES[side]["dockerfile"])
    assert re.fullmatch(r"\S*rust:[\w.-]+ AS build", build["from"]), build["from"]
    runs = [rest for instr, rest in build["lines"] if instr == "RUN"]
    # Both binaries in one build stage, shared word for word by the two Dockerfiles (the
    # layer cache compiles the workspace once); release unless PROFILE says otherwise.
    assert any(r.startswith('cargo build --locked --profile "$PROFILE" -p egress-dump -p egress-sync')
               for r in runs), runs
    assert ("ARG", "PROFILE=release") in build["lines"], build["lines"]
    other = "sync" if side == "dump" else "dump"
    assert build == dockerfile_stages(SIDES[other]["dockerfile"])[0], "the build stages differ"
    assert ":" in runtime["from"].split("/")[-1], "pin the runtime image tag"
    instrs = [instr for instr, _ in runtime["lines"]]
    assert "RUN" not in instrs and "SHELL" not in instrs, "the runtime stage runs no commands"
    copies = [rest for instr, rest in runtime["lines"] if instr == "COPY"]
    assert copies == [f"--from=build /out/{binary} /usr/local/bin/{binary}"], copies
    users = [rest for instr, rest in runtime["lines"] if instr == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "USER must be a numeric non-root UID"
    entry = [rest for instr, rest in runtime["lines"] if instr == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == [f"/usr/local/bin/{binary}"], "exec-form ENTRYPOINT"


@pytest.mark.parametrize("side", SIDE_NAMES)
def test_dockerfile_copies_enough_to_build(side):
    """The build stage's COPY set holds the whole workspace as cargo sees it."""
    cargo = find_tool("cargo")
    build, _ = dockerfile_stages(SIDES[side]["dockerfile"])
    with tempfile.TemporaryDirectory() as tmp:
        for instr, rest in build["lines"]:
            if instr != "COPY":
                continue
            *sources, dest = rest.split()
            assert not any(s.startswith("--") for s in sources), rest
            target = Path(tmp) / dest
            for src in sources:
                src_path = REPO / src
                if dest.endswith("/") or len(sources) > 1:
                    target.mkdir(parents=True, exist_ok=True)
                    into = target / src_path.name
                else:
                    into = target
                if src_path.is_dir():
                    shutil.copytree(src_path, into, dirs_exist_ok=True)
                else:
                    shutil.copy2(src_path, into)
        proc = subprocess.run([cargo, "metadata", "--no-deps", "--offline", "--format-version", "1"],
                              cwd=tmp, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        members = {p["name"] for p in json.loads(proc.stdout)["packages"]}
        assert SIDES[side]["binary"] in members
        assert (Path(tmp) / "Cargo.lock").is_file(), "--locked needs Cargo.lock"


# ---------------------------------------------------------------------------------------------
# Bucket rules


def test_bucket_lifecycle():
    with open(REPO / "bucket_lifecycle.json") as f:
        doc = json.load(f)
    assert set(doc) == {"Rules"}
    (rule,) = doc["Rules"]
    allowed = {"ID", "Filter", "Status", "Expiration", "AbortIncompleteMultipartUpload"}
    assert set(rule) <= allowed and {"Filter", "Status", "Expiration", "AbortIncompleteMultipartUpload"} <= set(rule)
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": ""}, "the rule covers every object"
    assert rule["Expiration"] == {"Days": 14}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_bucket_encryption():
    with open(REPO / "bucket_encryption.json") as f:
        doc = json.load(f)
    assert doc == {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}


# ---------------------------------------------------------------------------------------------
# README.md's Deployment section: the commands match the templates


def shell_commands(text, where, prompt=""):
    """Every line of the shell code blocks of `text` (`where` names it), continuations
    joined, each stripped of a leading `prompt`."""
    blocks, block, lang = [], None, None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if block is None:
                block, lang = [], line[3:].strip()
            else:
                if lang in ("sh", "bash", "shell", ""):
                    blocks.append("".join(block))
                block = None
        elif block is not None:
            block.append(line)
    assert block is None, f"{where}: unclosed code block"
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip().lstrip(prompt).strip() for line in joined.splitlines() if line.strip()]
    return commands


def doc_commands():
    readme = (REPO / "README.md").read_text()
    assert "\n## Deployment\n" in readme, "README.md has no Deployment section"
    section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    return shell_commands(section, "README.md Deployment section", prompt="$ ")


def check_processed_templates(commands, where):
    """Every `oc process -f` of `commands` (from `where`) processes a template that exists
    with parameters it has, and the deploy template of each side is processed."""
    seen = set()
    for cmd in commands:
        m = re.match(r"oc process -f (\S+)(.*?)(\||$)", cmd)
        if not m:
            continue
        path, args = m.group(1), m.group(2)
        assert (REPO / path).is_file(), f"{where} processes {path}, which does not exist"
        given = {name: "x" for name in re.findall(r"-p ([A-Za-z0-9_]+)=", args)}
        process(load(path), given)  # unknown or missing required parameters raise
        seen.add(path)
    expected = {f"{s['dir']}/deploy.yaml" for s in SIDES.values()}
    assert expected <= seen, f"{where} never processes {sorted(expected - seen)}"


def check_created_secrets(commands, where):
    """`commands` (from `where`) create every secret, with every key, the CronJobs read."""
    created = {}
    for cmd in commands:
        m = re.match(r"oc create secret generic (\S+)(.*)", cmd)
        if m:
            created[m.group(1)] = set(re.findall(r"--from-literal=([a-z0-9-]+)=", m.group(2)))
    for side in SIDE_NAMES:
        (container,) = pod_spec(cronjob(side))["containers"]
        for e in container["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            # An optional secret (egress-iceberg, for --iceberg's SQL catalog) need not exist.
            if not ref or (ref.get("optional") and ref["name"] not in created):
                continue
            assert ref["name"] in created, f"{where} never creates secret {ref['name']}"
            if not ref.get("optional"):
                assert ref["key"] in created[ref["name"]], f"{where} creates {ref['name']} without {ref['key']}"


def test_docs_oc_process_commands_match_templates():
    check_processed_templates(doc_commands(), "README.md")


def test_docs_secrets_match_templates():
    check_created_secrets(doc_commands(), "README.md")


def test_docs_mention_policies_and_manual_run():
    commands = doc_commands()
    assert any("put-bucket-lifecycle-configuration" in c and "file://bucket_lifecycle.json" in c for c in commands)
    assert any("put-bucket-encryption" in c and "file://bucket_encryption.json" in c for c in commands)
    assert any(c.startswith("oc create job --from=cronjob/egress-cj ") for c in commands)


# ---------------------------------------------------------------------------
# Alert rules: syntax and behaviour, with Prometheus's own checker.

MONITORING = REPO / "monitoring"


def promtool(*args):
    """`promtool <args>` run in monitoring/, which must succeed; its stdout."""
    proc = subprocess.run([find_tool("promtool"), *args], cwd=MONITORING,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_alert_rules_are_valid():
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", "egress.rules.yml")


def test_alert_rules_fire_when_they_should():
    # The unit tests replay series a Pushgateway holds after good days, a failed run, a
    # missed night and a halved table, and name the alerts expected at each instant.
    assert "SUCCESS" in promtool("test", "rules", "egress.rules.test.yml")
