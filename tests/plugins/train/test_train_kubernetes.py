"""The kubernetes training backend, without a cluster.

No Kubernetes API server runs here, so the tests split what a cluster would check:
every manifest ``build()`` makes is validated against the official Kubernetes JSON
schemas (``kubernetes-validate``, strict mode: unknown fields are errors), and the
submit / poll / logs / cancel / cleanup calls go through the official client to a local
in-memory fake of the API (``k8s_fake``) whose Job status the tests drive.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from k8s_fake import FakeKubernetes, serve
from pydantic import ValidationError

from zhongtai_train.backends import (
    BackendError,
    Distributed,
    InputMount,
    Launch,
    Requirements,
    SpecError,
    distributed_env,
)
from zhongtai_train.backends.kubernetes import (
    KubernetesBackend,
    KubernetesOptions,
    job_name,
)

#: The newest Kubernetes version kubernetes-validate 1.37 ships strict schemas for.
K8S_VERSION = "1.37.0"
JOB_ID = "01jabcdefghjkmnpqrstvwxyz0"
PROJECT_ID = "01jzyxwvtsrqpnmkjhgfedcba9"
TOKEN_VALUE = "zt_live_very_secret_token_value"


def make_launch(**changes: Any) -> Launch:
    options = changes.pop("options", None) or KubernetesOptions()
    launch = Launch(
        job_id=JOB_ID,
        project_id=PROJECT_ID,
        attempt=1,
        name=f"train-{JOB_ID}",
        argv=("python", "train.py", "--epochs=3"),
        env={
            "MLFLOW_TRACKING_URI": "https://zt.example/mlflow",
            "MLFLOW_TRACKING_TOKEN": TOKEN_VALUE,
            "MLFLOW_RUN_ID": "abc123",
            "SEED": "7",
        },
        secret_env=frozenset({"MLFLOW_TRACKING_TOKEN"}),
        workdir=None,
        image="registry.example/team/train:1.0",
        requirements=Requirements(),
        distributed=Distributed(),
        inputs=(),
        timeout=3600,
        options=options,
    )
    return replace(launch, **changes)


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def job_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [job] = [m for m in manifests if m["kind"] == "Job"]
    return job


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


# --------------------------------------------------------------------------- manifests

LAUNCHES = {
    "plain": lambda: make_launch(env={"SEED": "1"}, secret_env=frozenset()),
    "gpus": lambda: make_launch(requirements=Requirements(cpu=1.5, memory_mb=16384, gpus=2)),
    "secrets": lambda: make_launch(),
    "inputs-pvc": lambda: make_launch(
        inputs=(
            InputMount("train_set", "v1", Path("/srv/zt/objects/ds/a/v1"), None),
            InputMount("eval", "v2", None, "s3://bucket/ds/b/v2/"),
        ),
        options=KubernetesOptions(data_volume_claim="zt-data", data_root="/srv/zt"),
    ),
    "selector-sa": lambda: make_launch(
        options=KubernetesOptions(
            namespace="ml-jobs",
            service_account="trainer",
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu"},
            image_pull_policy="Always",
            backoff_limit=3,
            ttl_seconds_after_finished=0,
        )
    ),
    "multi-node": lambda: make_launch(
        distributed=Distributed(nodes=4),
        requirements=Requirements(cpu=8, memory_mb=65536, gpus=8),
        inputs=(InputMount("train_set", "v1", Path("/srv/zt/objects/ds/a/v1"), None),),
        options=KubernetesOptions(data_volume_claim="zt-data", data_root="/srv/zt"),
    ),
}


@pytest.mark.parametrize("kind", sorted(LAUNCHES))
def test_every_manifest_validates_against_the_official_schema(kind: str) -> None:
    manifests = KubernetesBackend().build(LAUNCHES[kind]())
    assert [m["kind"] for m in manifests][-1] == "Job"
    for manifest in manifests:
        validate(manifest)
    job = job_of(manifests)
    assert len(job["metadata"]["name"]) <= 63
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_validator_catches_a_bad_manifest() -> None:
    job = job_of(KubernetesBackend().build(make_launch()))
    validate(job)
    as_string = json.loads(json.dumps(job))
    container_of(as_string)["command"] = "python train.py"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(as_string)
    unknown = json.loads(json.dumps(job))
    unknown["spec"]["retries"] = 3  # strict: a field Kubernetes does not know
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown)


def test_job_spec_carries_options_timeout_and_labels() -> None:
    options = KubernetesOptions(
        namespace="ml", backoff_limit=2, ttl_seconds_after_finished=600, service_account="sa"
    )
    launch = make_launch(options=options, timeout=7200, attempt=3)
    job = job_of(KubernetesBackend().build(launch))
    assert job["metadata"]["name"] == f"train-{JOB_ID}-a3"
    assert job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["labels"] == launch.labels()
    assert job["spec"]["template"]["metadata"]["labels"] == launch.labels()
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sa"
    assert pod["automountServiceAccountToken"] is True
    # Without a service account the pod gets no API token at all.
    plain = job_of(KubernetesBackend().build(make_launch()))["spec"]["template"]["spec"]
    assert plain["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in plain


def test_the_job_name_keeps_the_attempt_within_63_characters() -> None:
    long = "t" * 60 + "-x"
    name = job_name(make_launch(name=long[:63], attempt=12))
    assert len(name) <= 63
    assert name.endswith("-a12")
    assert job_name(make_launch(attempt=1)) != job_name(make_launch(attempt=2))


def kubelet_expand(text: str, variables: dict[str, str]) -> str:
    """What Kubernetes makes of ``$(NAME)`` and ``$$`` in ``command`` and ``env`` values
    (a port of ``third_party/forked/golang/expansion``): a defined variable's value, one
    ``$`` for two, anything else as written."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            end = text.find(")", i + 2) if text[i + 1] == "(" else -1
            if end != -1:
                name = text[i + 2 : end]
                out.append(variables.get(name, f"$({name})"))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def test_command_is_an_argument_list_never_a_shell() -> None:
    argv = (
        "python",
        "train.py",
        "--lr",
        "0.1; touch /tmp/pwn",
        "$(id)",
        "$(SEED)",
        "$$(SEED)",
        "cost$",
        "a b",
        "'q'",
    )
    launch = make_launch(argv=argv, env={"SEED": "7", "PRICE": "$(SEED) $5"})
    container = container_of(job_of(KubernetesBackend().build(launch)))
    assert "args" not in container
    assert "sh" not in container["command"] and "-c" not in container["command"]
    # Kubernetes would put the value of SEED in place of "$(SEED)": each argument and
    # variable reaches the code as the user wrote it.
    variables: dict[str, str] = {}
    for item in container["env"]:  # each value may name the variables before it
        if "value" in item:
            variables[item["name"]] = kubelet_expand(item["value"], variables)
    assert [kubelet_expand(arg, variables) for arg in container["command"]] == list(argv)
    assert variables == {"SEED": "7", "PRICE": "$(SEED) $5"}


def test_the_secret_variable_lives_only_in_the_secret() -> None:
    launch = make_launch()
    secret, job = KubernetesBackend().build(launch)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["labels"] == launch.labels()
    assert secret["stringData"] == {"MLFLOW_TRACKING_TOKEN": TOKEN_VALUE}
    assert TOKEN_VALUE not in json.dumps(job)
    env = {item["name"]: item for item in container_of(job)["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"] == {
        "name": "MLFLOW_TRACKING_TOKEN",
        "valueFrom": {
            "secretKeyRef": {"name": secret["metadata"]["name"], "key": "MLFLOW_TRACKING_TOKEN"}
        },
    }
    assert env["SEED"] == {"name": "SEED", "value": "7"}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "https://zt.example/mlflow"
    # No secret variables: no Secret.
    plain = KubernetesBackend().build(make_launch(secret_env=frozenset()))
    assert [m["kind"] for m in plain] == ["Job"]


def test_resources_and_gpu_limits() -> None:
    launch = make_launch(requirements=Requirements(cpu=1.5, memory_mb=2048, gpus=2))
    resources = container_of(job_of(KubernetesBackend().build(launch)))["resources"]
    assert resources["requests"] == {"cpu": "1500m", "memory": "2048Mi"}
    assert resources["limits"] == {"cpu": "1500m", "memory": "2048Mi", "nvidia.com/gpu": "2"}
    cpu_only = container_of(job_of(KubernetesBackend().build(make_launch())))["resources"]
    assert "nvidia.com/gpu" not in cpu_only["limits"]


def test_inputs_mount_from_the_claim_or_come_as_uris() -> None:
    launch = LAUNCHES["inputs-pvc"]()
    job = job_of(KubernetesBackend().build(launch))
    container = container_of(job)
    assert container["volumeMounts"] == [
        {
            "name": "data",
            "mountPath": "/data/train_set",
            "subPath": "objects/ds/a/v1",
            "readOnly": True,
        }
    ]
    assert job["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "zt-data", "readOnly": True}}
    ]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ZT_INPUT_TRAIN_SET"] == "/data/train_set"
    assert env["ZT_INPUT_EVAL"] == "s3://bucket/ds/b/v2/"
    # Without a claim, an input with a uri is named by it and nothing is mounted.
    no_claim = make_launch(inputs=(InputMount("x", "v", Path("/srv/zt/x"), "s3://b/x/"),))
    container = container_of(job_of(KubernetesBackend().build(no_claim)))
    assert "volumeMounts" not in container
    assert {"name": "ZT_INPUT_X", "value": "s3://b/x/"} in container["env"]


def test_an_input_a_pod_cannot_reach_is_refused() -> None:
    backend = KubernetesBackend()
    local_only = make_launch(inputs=(InputMount("x", "v", Path("/srv/zt/x"), None),))
    with pytest.raises(SpecError) as caught:
        backend.check(local_only)
    assert caught.value.field == "inputs"
    assert "data_volume_claim" in caught.value.message
    outside = replace(
        local_only, options=KubernetesOptions(data_volume_claim="zt", data_root="/elsewhere")
    )
    with pytest.raises(SpecError, match="not under data_root"):
        backend.check(outside)
    # At submission the inputs are not fetched yet (no path, no uri): check lets them by
    # when a claim can bring them and refuses them otherwise; a launch that still has
    # neither cannot be built.
    unknown = make_launch(inputs=(InputMount("x", "v", None, None),))
    with pytest.raises(SpecError, match="data_volume_claim") as refused:
        backend.check(unknown)
    assert refused.value.field == "inputs"
    backend.check(dataclasses.replace(unknown, options=KubernetesOptions(data_volume_claim="zt")))
    with pytest.raises(SpecError, match="a pod cannot reach its files"):
        backend.build(unknown)


def multi_node(nodes: int = 4, **changes: Any) -> Launch:
    return make_launch(distributed=Distributed(nodes=nodes), **changes)


def service_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [service] = [m for m in manifests if m["kind"] == "Service"]
    return service


def test_several_nodes_run_as_an_indexed_job_behind_a_headless_service() -> None:
    options = KubernetesOptions(namespace="ml", backoff_limit=1, ttl_seconds_after_finished=60)
    launch = multi_node(4, options=options, timeout=7200)
    manifests = KubernetesBackend().build(launch)
    assert [m["kind"] for m in manifests] == ["Secret", "Service", "Job"]
    for manifest in manifests:
        validate(manifest)
    job, service = job_of(manifests), service_of(manifests)
    name = job["metadata"]["name"]

    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    # What a one-node Job has, it keeps.
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert job["metadata"]["labels"] == launch.labels()

    assert service["metadata"] == {
        "name": service["metadata"]["name"],
        "namespace": "ml",
        "labels": launch.labels(),
    }
    assert service["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"] == [
        {"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}
    ]
    # The Service selects exactly this attempt's pods, and the pods join its subdomain.
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["zhongtai.io/attempt"] == str(launch.attempt)
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]

    env = {item["name"]: item for item in container_of(job)["env"]}
    index = {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    master = f"{name}-0.{service['metadata']['name']}"  # index 0's pod, through the Service
    fixed = {
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": master,
        "MASTER_PORT": "29500",
        "PET_NNODES": "4",
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": "29500",
    }
    assert {key: env[key].get("value") for key in fixed} == fixed
    for rank in ("RANK", "NODE_RANK", "GROUP_RANK", "PET_NODE_RANK"):
        assert env[rank] == {"name": rank, "valueFrom": index}
    # The same names as the local backend sets (distributed_env), nothing missing.
    local = distributed_env(
        launch.distributed, node_rank=0, local_rank=0, master_addr="x", master_port=1
    )
    assert set(local) <= set(env)
    # The token stays in the Secret.
    assert TOKEN_VALUE not in json.dumps(job) + json.dumps(service)


def test_one_node_has_no_service_and_no_rank_variables() -> None:
    manifests = KubernetesBackend().build(make_launch())
    assert [m["kind"] for m in manifests] == ["Secret", "Job"]
    job = job_of(manifests)
    assert "completionMode" not in job["spec"]
    assert "subdomain" not in job["spec"]["template"]["spec"]
    names = {item["name"] for item in container_of(job)["env"]}
    assert not names & {"WORLD_SIZE", "RANK", "MASTER_ADDR", "PET_NNODES"}


def test_the_pods_host_names_keep_within_63_characters() -> None:
    launch = multi_node(256, name="t" * 63, attempt=12)
    manifests = KubernetesBackend().build(launch)
    job, service = job_of(manifests), service_of(manifests)
    name = job["metadata"]["name"]
    assert name.endswith("-a12")
    assert len(f"{name}-255") <= 63  # the host name of the last pod
    assert len(service["metadata"]["name"]) <= 63
    for manifest in manifests:
        validate(manifest)
    # One node keeps the name it had.
    assert job_name(make_launch(name="t" * 63, attempt=12)) == "t" * 59 + "-a12"


def test_the_platform_says_where_the_nodes_are_not_the_user() -> None:
    env = {"PET_MASTER_ADDR": "evil.example", "PET_NNODES": "99", "SEED": "7"}
    job = job_of(KubernetesBackend().build(multi_node(2, env=env, secret_env=frozenset())))
    entries = container_of(job)["env"]
    names = [item["name"] for item in entries]
    assert len(names) == len(set(names))
    values = {item["name"]: item.get("value") for item in entries}
    assert values["PET_NNODES"] == "2"
    assert values["PET_MASTER_ADDR"] == values["MASTER_ADDR"] != "evil.example"
    assert values["SEED"] == "7"


# --------------------------------------------------------------------------- options, check


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"namespace": "x" * 64}, "namespace"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"surprise": 1}, "surprise"),
        ({"service_account": "Admin!"}, "service_account"),
        ({"node_selector": {"bad key/x/y": "v"}}, "node_selector"),
        ({"node_selector": {"pool": "-bad"}}, "node_selector"),
        ({"backoff_limit": 11}, "backoff_limit"),
        ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
        ({"kubeconfig": "relative/kubeconfig"}, "kubeconfig"),
        ({"data_volume_claim": "UPPER"}, "data_volume_claim"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KubernetesOptions.model_validate(options)
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_good_options_pass() -> None:
    options = KubernetesOptions.model_validate(
        {
            "namespace": "ml-team",
            "kubeconfig": "/etc/zhongtai/kubeconfig",
            "context": "prod",
            "node_selector": {"kubernetes.io/arch": "amd64", "empty": ""},
            "data_volume_claim": "zt.data",
        }
    )
    assert options.image_pull_policy == "IfNotPresent"
    assert options.backoff_limit == 0
    assert options.ttl_seconds_after_finished == 3600


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"image": None, "workdir": Path("/tmp/code")}, "code"),
        ({"distributed": Distributed(procs_per_node=4)}, "distributed.procs_per_node"),
        ({"distributed": Distributed(nodes=2, procs_per_node=8)}, "distributed.procs_per_node"),
    ],
)
def test_check_refuses_what_it_cannot_run(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        KubernetesBackend().check(make_launch(**changes))
    assert caught.value.field == field
    KubernetesBackend().check(make_launch())  # and the plain launch passes


def test_check_takes_several_nodes_and_says_how_to_use_several_gpus() -> None:
    KubernetesBackend().check(make_launch(distributed=Distributed(nodes=256)))
    with pytest.raises(SpecError) as caught:
        KubernetesBackend().check(make_launch(distributed=Distributed(procs_per_node=8)))
    assert "torchrun" in caught.value.message
    assert "PET_" in caught.value.message


def test_check_refuses_a_kubeconfig_inside_the_platforms_data(tmp_path: Path) -> None:
    platform: Any = SimpleNamespace(
        settings=SimpleNamespace(home=tmp_path, storage=SimpleNamespace(root=None))
    )
    options = KubernetesOptions(kubeconfig=str(tmp_path / "objects" / "upload"))
    with pytest.raises(SpecError) as caught:
        KubernetesBackend(platform).check(make_launch(options=options))
    assert caught.value.field == "backend_options.kubeconfig"
    KubernetesBackend(platform).check(make_launch(options=KubernetesOptions(kubeconfig="/etc/k")))


def test_the_class_describes_itself() -> None:
    described = KubernetesBackend.describe()
    assert described["name"] == "kubernetes"
    assert described["runs_images"] is True
    assert described["needs_workdir"] is False
    assert "namespace" in described["options_schema"]["properties"]


# --------------------------------------------------------------------------- against the fake


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as server:
        yield server


@pytest.fixture
def options(fake: FakeKubernetes, tmp_path: Path) -> KubernetesOptions:
    return KubernetesOptions(namespace="ml", kubeconfig=str(fake.kubeconfig(tmp_path)))


def server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what the API server adds."""
    obj = json.loads(json.dumps(obj))
    for key in ("uid", "creationTimestamp", "resourceVersion", "ownerReferences"):
        obj["metadata"].pop(key, None)
    obj.pop("status", None)
    return obj


def test_submit_creates_the_secret_and_the_job(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    launch = make_launch(options=options)
    secret, job = backend.build(launch)
    handle = backend.submit(launch)
    name = job["metadata"]["name"]
    assert handle.startswith(f"ml/{name}?")

    stored = fake.jobs[("ml", name)]
    assert server_fields(stored) == job
    validate(server_fields(stored))
    stored_secret = fake.secrets[("ml", secret["metadata"]["name"])]
    assert server_fields(stored_secret) == secret
    # The Secret belongs to the Job, so Kubernetes deletes it with the Job.
    assert stored_secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": stored["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]
    assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in fake.requests] == [
        ("POST", ["ml", "secrets"]),
        ("POST", ["ml", "jobs"]),
        ("PATCH", ["secrets", secret["metadata"]["name"]]),
    ]
    assert fake.requests[2].headers["content-type"] == "application/merge-patch+json"
    # The token travels in the Secret only.
    assert TOKEN_VALUE not in json.dumps(stored)

    assert backend.poll(handle).state == "pending"


def test_submitting_the_same_attempt_twice_is_idempotent(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    launch = make_launch(options=options)
    first = KubernetesBackend().submit(launch)
    # A worker that died after submit tries again, with a token made again.
    again = replace(launch, env={**launch.env, "MLFLOW_TRACKING_TOKEN": "zt_new_token"})
    second = KubernetesBackend().submit(again)
    assert first == second
    assert len(fake.jobs) == 1 and len(fake.secrets) == 1
    [secret] = fake.secrets.values()
    assert secret["stringData"] == {"MLFLOW_TRACKING_TOKEN": "zt_new_token"}
    assert len(fake.calls("POST", "/jobs$")) == 2  # the second got 409 and took the Job


def test_a_job_of_another_attempt_with_the_same_name_is_not_taken(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    KubernetesBackend().submit(make_launch(options=options))
    intruder = make_launch(options=options, job_id="01jother0000000000000000000")
    with pytest.raises(BackendError, match="already exists and was not created for job"):
        KubernetesBackend().submit(intruder)


def test_poll_maps_the_jobs_status(fake: FakeKubernetes, options: KubernetesOptions) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    name = job_name(make_launch())
    assert backend.poll(handle).state == "pending"

    fake.set_job_status("ml", name, active=1)
    fake.add_pod("ml", name, f"{name}-abcde", created="2030-01-01T00:00:00Z")
    fake.set_pod(
        "ml", f"{name}-abcde", phase="Pending", waiting=("ImagePullBackOff", "pull failed")
    )
    outcome = backend.poll(handle)
    assert (outcome.state, outcome.message) == ("pending", "ImagePullBackOff: pull failed")

    fake.set_pod("ml", f"{name}-abcde", phase="Running")
    assert backend.poll(handle).state == "running"
    fake.set_job_status("ml", name, ready=1)
    assert backend.poll(handle).state == "running"

    fake.set_job_status("ml", name, active=0, ready=0, succeeded=1)
    fake.set_pod("ml", f"{name}-abcde", phase="Succeeded", exit_code=0)
    fake.add_condition("ml", name, "SuccessCriteriaMet", "CompletionsReached")
    fake.add_condition("ml", name, "Complete", "CompletionsReached")
    outcome = backend.poll(handle)
    assert (outcome.state, outcome.final, outcome.exit_code) == ("succeeded", True, 0)


@pytest.mark.parametrize(
    ("reason", "message", "exit_code"),
    [
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", 3),
        ("DeadlineExceeded", "Job was active longer than specified deadline", None),
    ],
)
def test_a_failed_job_fails_with_the_controllers_reason(
    fake: FakeKubernetes,
    options: KubernetesOptions,
    reason: str,
    message: str,
    exit_code: int | None,
) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    name = job_name(make_launch())
    fake.add_pod("ml", name, f"{name}-p1", created="2030-01-01T00:00:00Z")
    if exit_code is not None:
        fake.set_pod("ml", f"{name}-p1", phase="Failed", exit_code=exit_code)
    fake.set_job_status("ml", name, active=0, failed=1)
    # Kubernetes 1.31+ says FailureTarget first, Failed once the pods are gone.
    fake.add_condition("ml", name, "FailureTarget", reason, message)
    assert backend.poll(handle).state == "pending"
    fake.add_condition("ml", name, "Failed", reason, message)
    outcome = backend.poll(handle)
    assert (outcome.state, outcome.reason, outcome.message) == ("failed", reason, message)
    assert outcome.exit_code == exit_code
    # The backend only reads: it neither re-creates the Job nor starts pods of its own.
    assert fake.calls("POST", "/jobs$") == fake.calls("POST", "/jobs$")[:1]
    assert list(fake.jobs) == [("ml", name)]


def test_a_job_that_vanished_is_failed(fake: FakeKubernetes, options: KubernetesOptions) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    fake.jobs.clear()
    outcome = backend.poll(handle)
    assert (outcome.state, outcome.reason) == ("failed", "JobDeleted")


def test_logs_come_in_order_without_duplicates(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    name = job_name(make_launch())
    pod = f"{name}-p1"

    assert backend.read_logs(handle, None).lines == []  # no pod yet
    fake.add_pod("ml", name, pod, created="2030-01-01T00:00:00Z")
    chunk = backend.read_logs(handle, None)  # pending: nothing, cursor kept
    assert (chunk.lines, chunk.cursor) == ([], None)

    fake.set_pod("ml", pod, phase="Running")
    fake.log("ml", pod, "2030-01-01T00:00:01.5Z", "epoch 1")
    fake.log("ml", pod, "2030-01-01T00:00:02.000000001Z", "same stamp A")
    fake.log("ml", pod, "2030-01-01T00:00:02.000000001Z", "same stamp B")
    first = backend.read_logs(handle, None)
    assert first.lines == ["epoch 1", "same stamp A", "same stamp B"]

    again = backend.read_logs(handle, first.cursor)
    assert (again.lines, again.cursor) == ([], first.cursor)

    fake.log("ml", pod, "2030-01-01T00:00:02.000000001Z", "same stamp C")
    fake.log("ml", pod, "2030-01-01T00:00:02.1Z", "")
    fake.log("ml", pod, "2030-01-01T00:00:03Z", "loss 0.1  (two spaces kept)")
    second = backend.read_logs(handle, first.cursor)
    assert second.lines == ["same stamp C", "", "loss 0.1  (two spaces kept)"]
    # The cursor asked from the whole second of the last line (sinceTime has seconds).
    assert fake.calls("GET", "/log$")[-1].query["sinceTime"] == ["2030-01-01T00:00:02Z"]
    assert fake.calls("GET", "/log$")[-1].query["timestamps"] == ["true"]

    # Kubernetes retried the pod (backoffLimit > 0): its lines follow the first pod's.
    fake.log("ml", pod, "2030-01-01T00:00:04Z", "last words")
    fake.set_pod("ml", pod, phase="Failed", exit_code=1)
    fake.add_pod("ml", name, f"{name}-p2", created="2030-01-01T00:01:00Z", phase="Running")
    fake.log("ml", f"{name}-p2", "2030-01-01T00:01:05Z", "retry starts")
    third = backend.read_logs(handle, second.cursor)
    assert third.lines == ["last words", "retry starts"]
    fourth = backend.read_logs(handle, third.cursor)
    assert fourth.lines == []

    everything = backend.read_logs(handle, None).lines
    assert everything == first.lines + second.lines + third.lines


def test_cancel_deletes_the_job_in_the_foreground(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    name = job_name(make_launch())
    fake.add_pod("ml", name, f"{name}-p1", created="2030-01-01T00:00:00Z", phase="Running")
    backend.cancel(handle)
    [delete] = fake.calls("DELETE", "/jobs/")
    assert delete.query["propagationPolicy"] == ["Foreground"]
    assert fake.jobs == {} and fake.pods == {}
    assert fake.secrets == {}  # garbage-collected with its owner, the Job
    backend.cancel(handle)  # 404: already gone, no error
    assert backend.poll(handle).reason == "JobDeleted"


def test_cleanup_removes_the_job_and_the_secret(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    launch = make_launch(options=options)
    handle = backend.submit(launch)
    fake.secrets[("ml", f"{job_name(launch)}-env")]["metadata"].pop("ownerReferences")
    backend.cleanup(handle)
    assert fake.jobs == {} and fake.secrets == {}
    [delete] = fake.calls("DELETE", "/jobs/")
    assert delete.query["propagationPolicy"] == ["Background"]
    assert len(fake.calls("DELETE", "/secrets/")) == 1
    KubernetesBackend().cleanup(handle)  # both 404: fine


def test_api_errors_become_backend_errors(fake: FakeKubernetes, options: KubernetesOptions) -> None:
    backend = KubernetesBackend()
    fake.fail("POST", "/jobs$", 500, "etcdserver: request timed out")
    with pytest.raises(BackendError, match=r"500.*etcdserver: request timed out"):
        backend.submit(make_launch(options=options))
    assert fake.secrets == {}  # the Secret made for the failed Job was removed again

    handle = backend.submit(make_launch(options=options))
    fake.fail("GET", "/jobs/", 500, "the server is on fire")
    with pytest.raises(BackendError, match="the server is on fire"):
        backend.poll(handle)
    fake.fail("DELETE", "/jobs/", 403, 'jobs is forbidden: User "x" cannot delete')
    with pytest.raises(BackendError, match="forbidden"):
        backend.cancel(handle)
    fake.fail("GET", "/pods$", 500, "no pods for you")
    with pytest.raises(BackendError, match="no pods for you"):
        backend.read_logs(handle, None)


def test_credentials_and_context_come_from_the_kubeconfig(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    both = fake.kubeconfig(tmp_path, extra_context=True)  # current context: a closed port
    options = KubernetesOptions(namespace="ml", kubeconfig=str(both), context="fake")
    handle = KubernetesBackend().submit(make_launch(options=options))
    assert fake.requests[0].headers["authorization"] == "Bearer fake-cluster-token"
    # A fresh backend (another worker, after a crash) finds the cluster from the handle.
    assert KubernetesBackend().poll(handle).state == "pending"
    assert "context=fake" in handle

    unreachable = KubernetesOptions(namespace="ml", kubeconfig=str(both))  # context: dead
    with pytest.raises(BackendError, match="unreachable"):
        KubernetesBackend().submit(make_launch(options=unreachable))

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    bad_token = fake.kubeconfig(wrong, token="nope")
    with pytest.raises(BackendError, match="401"):
        KubernetesBackend().submit(
            make_launch(options=KubernetesOptions(kubeconfig=str(bad_token)))
        )
    missing = KubernetesOptions(kubeconfig=str(tmp_path / "missing"))
    with pytest.raises(BackendError, match="Kubernetes configuration"):
        KubernetesBackend().submit(make_launch(options=missing))


def test_a_handle_that_is_not_ours_is_refused() -> None:
    with pytest.raises(BackendError, match="not a kubernetes backend handle"):
        KubernetesBackend().poll("ray:raysubmit_123")


# --------------------------------------------------------------- several nodes, against the fake


def test_submit_creates_the_service_before_the_job_and_the_job_owns_it(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    launch = multi_node(3, options=options)
    manifests = backend.build(launch)
    handle = backend.submit(launch)
    job, service = job_of(manifests), service_of(manifests)
    name, service_name = job["metadata"]["name"], service["metadata"]["name"]
    assert handle.startswith(f"ml/{name}?nodes=3&")

    stored_job = fake.jobs[("ml", name)]
    stored_service = fake.services[("ml", service_name)]
    assert server_fields(stored_job) == job
    assert server_fields(stored_service) == service
    validate(server_fields(stored_service))
    # The pods' names resolve from their start: the Service comes first.
    assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in fake.requests] == [
        ("POST", ["ml", "secrets"]),
        ("POST", ["ml", "services"]),
        ("POST", ["ml", "jobs"]),
        ("PATCH", ["secrets", f"{name}-env"]),
        ("PATCH", ["services", service_name]),
    ]
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": stored_job["metadata"]["uid"],
        "blockOwnerDeletion": False,
    }
    assert stored_service["metadata"]["ownerReferences"] == [owner]
    assert fake.secrets[("ml", f"{name}-env")]["metadata"]["ownerReferences"] == [owner]

    # Kubernetes deletes the Service with the Job (cancel, or the Job's TTL).
    backend.cancel(handle)
    assert fake.jobs == {} and fake.services == {} and fake.secrets == {}


def test_a_retry_takes_its_own_service_and_refuses_another_attempts(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    launch = multi_node(2, options=options)
    first = KubernetesBackend().submit(launch)
    assert KubernetesBackend().submit(launch) == first  # the worker died after submit
    assert len(fake.services) == 1 and len(fake.jobs) == 1

    # A Service of that name left by another job: neither taken nor removed.
    other = multi_node(2, options=options, job_id="01jother0000000000000000000")
    fake.jobs.clear()
    fake.secrets.clear()
    [(key, service)] = list(fake.services.items())
    service["metadata"]["labels"] = other.labels()
    service["metadata"].pop("ownerReferences")
    with pytest.raises(BackendError, match=r"Service .* already exists and was not created for"):
        KubernetesBackend().submit(launch)
    assert fake.jobs == {}  # no Job to find a Service that is not its own
    assert fake.secrets == {}  # the Secret made for it was removed again
    assert fake.services[key]["metadata"]["labels"] == other.labels()


def test_a_failure_creating_the_job_removes_the_service_and_the_secret(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    fake.fail("POST", "/jobs$", 500, "etcdserver: request timed out")
    with pytest.raises(BackendError, match="etcdserver"):
        KubernetesBackend().submit(multi_node(2, options=options))
    assert fake.jobs == {} and fake.services == {} and fake.secrets == {}
    assert len(fake.calls("DELETE", "/services/")) == 1
    # And a failure creating the Service leaves neither a Secret nor a Job behind.
    fake.fail("POST", "/services$", 403, 'services is forbidden: User "x" cannot create')
    with pytest.raises(BackendError, match="forbidden"):
        KubernetesBackend().submit(multi_node(2, options=options))
    assert fake.jobs == {} and fake.services == {} and fake.secrets == {}


def test_cleanup_removes_the_job_the_secret_and_the_service(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    launch = multi_node(2, options=options)
    handle = backend.submit(launch)
    name = job_name(launch)
    # Even when they did not get their owner (the PATCH failed), cleanup finds them.
    fake.secrets[("ml", f"{name}-env")]["metadata"].pop("ownerReferences")
    fake.services[("ml", name)]["metadata"].pop("ownerReferences")
    backend.cleanup(handle)
    assert fake.jobs == {} and fake.secrets == {} and fake.services == {}
    assert len(fake.calls("DELETE", "/services/")) == 1
    KubernetesBackend().cleanup(handle)  # all three 404: fine

    # One node has no Service: cleanup does not ask for one (nor the right to delete it).
    before = len(fake.calls("DELETE", "/services/"))
    KubernetesBackend().cleanup(KubernetesBackend().submit(make_launch(options=options)))
    assert len(fake.calls("DELETE", "/services/")) == before


def test_several_nodes_show_the_logs_of_index_0(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    launch = multi_node(2, options=options, attempt=2)
    handle = backend.submit(launch)
    name = job_name(launch)
    for index in (1, 0):  # rank 1 happens to start first
        pod = f"{name}-{index}-x"
        fake.add_pod("ml", name, pod, created=f"2030-01-01T00:00:0{index}Z", index=index)
        fake.set_pod("ml", pod, phase="Running")
        fake.log("ml", pod, "2030-01-01T00:00:05Z", f"rank {index} epoch 1")
        fake.log("ml", pod, "2030-01-01T00:00:06Z", f"rank {index} epoch 2")
    first = backend.read_logs(handle, None)
    assert first.lines == ["rank 0 epoch 1", "rank 0 epoch 2"]
    [query] = {tuple(r.query["labelSelector"]) for r in fake.calls("GET", "/pods$")}
    assert query == (f"job-name={name},batch.kubernetes.io/job-completion-index=0",)

    # Index 0's pod replaced (backoff_limit > 0): its lines follow, still none of rank 1.
    fake.log("ml", f"{name}-0-x", "2030-01-01T00:00:07Z", "rank 0 dies")
    fake.set_pod("ml", f"{name}-0-x", phase="Failed", exit_code=1)
    fake.add_pod("ml", name, f"{name}-0-y", created="2030-01-01T00:01:00Z", index=0)
    fake.set_pod("ml", f"{name}-0-y", phase="Running")
    fake.log("ml", f"{name}-0-y", "2030-01-01T00:01:01Z", "rank 0 again")
    fake.log("ml", f"{name}-1-x", "2030-01-01T00:01:02Z", "rank 1 epoch 3")
    assert backend.read_logs(handle, first.cursor).lines == ["rank 0 dies", "rank 0 again"]


@pytest.mark.parametrize(
    ("condition", "reason", "state", "exit_code"),
    [
        ("Complete", "CompletionsReached", "succeeded", 0),
        ("Failed", "BackoffLimitExceeded", "failed", 2),
        ("Failed", "DeadlineExceeded", "failed", 2),
    ],
)
def test_poll_maps_an_indexed_jobs_conditions(
    fake: FakeKubernetes,
    options: KubernetesOptions,
    condition: str,
    reason: str,
    state: str,
    exit_code: int,
) -> None:
    backend = KubernetesBackend()
    launch = multi_node(2, options=options)
    handle = backend.submit(launch)
    name = job_name(launch)
    fake.set_job_status("ml", name, active=2)
    fake.add_pod("ml", name, f"{name}-1-x", created="2030-01-01T00:00:00Z", index=1)
    fake.add_pod("ml", name, f"{name}-0-x", created="2030-01-01T00:00:01Z", index=0)
    fake.set_pod("ml", f"{name}-1-x", phase="Running")
    assert backend.poll(handle).state == "running"

    # Rank 1 fails first; rank 0 ends after it: the failure's code is rank 1's.
    fake.set_pod("ml", f"{name}-1-x", phase="Failed", exit_code=2 if state == "failed" else 0)
    fake.set_pod("ml", f"{name}-0-x", phase="Succeeded", exit_code=0)
    fake.set_job_status("ml", name, active=0)
    fake.add_condition("ml", name, condition, reason, "the controller's words")
    outcome = backend.poll(handle)
    assert (outcome.state, outcome.reason, outcome.exit_code) == (
        state,
        "Complete" if state == "succeeded" else reason,
        exit_code,
    )
    assert len(fake.calls("POST", "/jobs$")) == 1  # no retries of the backend's own


def test_handles_of_earlier_versions_still_parse(
    fake: FakeKubernetes, options: KubernetesOptions
) -> None:
    backend = KubernetesBackend()
    handle = backend.submit(make_launch(options=options))
    assert "nodes=" not in handle  # one node: the handle it always was
    old = f"ml/{job_name(make_launch())}?kubeconfig={options.kubeconfig}"
    assert backend.poll(old).state == "pending"
    backend.cleanup(old)
    assert fake.jobs == {} and fake.secrets == {}
    for bad in ("ml/x?nodes=0", "ml/x?nodes=two", "ml/x?nodes=100000"):
        with pytest.raises(BackendError, match="not a kubernetes backend handle"):
            backend.poll(bad)
