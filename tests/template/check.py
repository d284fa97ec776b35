#!/usr/bin/env python3
"""Checks template.yaml the way a deployment would meet it, offline.

1. cfn-lint, clean.
2. The SAM transform (samtranslator, as `sam deploy` runs it), with the local CodeUri and
   DefinitionUri replaced as `sam package` would (S3 locations; the ASL file inlined).
3. The wiring: every ${...} of the ASL has a DefinitionSubstitution, each task function runs
   the task its substitution names, every function has the environment its code reads, and
   each function's IAM actions are exactly the ones expected for the calls its code makes.
4. The transformed stack is created in moto's CloudFormation (in process) and holds the
   resources the functions rely on.

Input (stdin, JSON): {"substitutions": {SubstitutionName: task}, "required_env": [...],
"task_env": "TERN_TASK_FUNCTION", "permissions": {LogicalId: [actions]}}.
Prints one line per problem and exits 1 if there is any.
"""

import copy
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402
from samtranslator.internal.managed_policies import get_bundled_managed_policy_map  # noqa: E402
from samtranslator.public.translator import ManagedPolicyLoader  # noqa: E402,F401

problems = []


def problem(msg):
    problems.append(msg)


class BundledPolicies:
    def load(self):
        return get_bundled_managed_policy_map("aws")


def packaged(template):
    """What `sam package` leaves: code and definitions in S3, the ASL inlined."""
    t = copy.deepcopy(template)
    for name, res in t["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = {"Bucket": "tern-artifacts", "Key": f"{name}.zip"}
        if res["Type"] == "AWS::Serverless::StateMachine" and "DefinitionUri" in props:
            with open(os.path.join(ROOT, props.pop("DefinitionUri"))) as f:
                props["Definition"] = json.load(f)
    return t


def resolve_sub(value):
    """The text of a Fn::Sub string (or the first element of its list form)."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        v = value["Fn::Sub"]
        return v if isinstance(v, str) else v[0]
    return value


def actions_of(doc):
    out = set()
    for st in doc.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        a = st.get("Action", [])
        out.update([a] if isinstance(a, str) else a)
    return out


def main():
    spec = json.load(sys.stdin)
    lint = subprocess.run(
        ["cfn-lint", os.path.join(ROOT, "template.yaml")], capture_output=True, text=True
    )
    if lint.returncode != 0:
        problem("cfn-lint: " + (lint.stdout + lint.stderr).strip())

    with open(os.path.join(ROOT, "template.yaml")) as f:
        template = yaml_parse(f.read())
    with open(os.path.join(ROOT, "statemachines/replication-run.asl.json")) as f:
        asl_text = f.read()

    # The ASL's substitutions and the template's.
    machine = next(
        r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::StateMachine"
    )
    subs = machine["Properties"].get("DefinitionSubstitutions", {})
    used = set(re.findall(r"\$\{(\w+)\}", asl_text))
    for name in sorted(used - set(subs)):
        problem(f"the ASL uses ${{{name}}} but the state machine has no DefinitionSubstitution for it")
    for name in sorted(set(subs) - used):
        problem(f"DefinitionSubstitution {name} is not used by the ASL")
    for name, task in spec["substitutions"].items():
        if name not in used:
            problem(f"the core's task substitution {name} ({task}) is not in the ASL")
        target = subs.get(name)
        if not (isinstance(target, dict) and "Fn::GetAtt" in target):
            problem(f"DefinitionSubstitution {name} is not a function's ARN")
            continue
        logical = target["Fn::GetAtt"][0] if isinstance(target["Fn::GetAtt"], list) else target["Fn::GetAtt"].split(".")[0]
        fn = template["Resources"].get(logical, {})
        env = fn.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if env.get(spec["task_env"]) != task:
            problem(f"{logical} (for {name}) runs task {env.get(spec['task_env'])!r}, not {task!r}")

    out = transform(packaged(template), {}, BundledPolicies())
    resources = out["Resources"]
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})

    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    known = set(spec.get("known_env", []))
    for name, fn in functions.items():
        for var in fn["Properties"].get("Environment", {}).get("Variables", {}):
            if var.startswith("TERN_") and known and var not in known:
                problem(f"{name} sets {var}, which no code reads")
    for name, fn in functions.items():
        env = fn["Properties"].get("Environment", {}).get("Variables", {})
        for var in spec["required_env"]:
            if var in ("AWS_REGION",):
                continue
            if var not in env and var not in globals_env:
                problem(f"{name} does not set {var}")
        for var in ("TERN_EVENT_SOURCE", "TERN_TABLE_NAME"):
            if var not in env:
                problem(f"{name} does not get {var} after the transform")

    # IAM: each function's role, its inline policies and the managed policies it attaches.
    managed = {k: v for k, v in resources.items() if v["Type"] == "AWS::IAM::ManagedPolicy"}
    for name, expected in spec["permissions"].items():
        if name not in functions:
            problem(f"no function {name} in the transformed template")
            continue
        role_ref = functions[name]["Properties"]["Role"]
        role_name = role_ref["Fn::GetAtt"][0]
        role = resources[role_name]["Properties"]
        actions = set()
        for p in role.get("Policies", []):
            actions |= actions_of(p["PolicyDocument"])
        for arn in role.get("ManagedPolicyArns", []):
            if isinstance(arn, dict) and "Ref" in arn and arn["Ref"] in managed:
                actions |= actions_of(managed[arn["Ref"]]["Properties"]["PolicyDocument"])
        # What SAM adds for every function (logs) and for its event sources.
        actions = {a for a in actions if not a.startswith("logs:")}
        if "Events" in template["Resources"][name]["Properties"]:
            for ev in template["Resources"][name]["Properties"]["Events"].values():
                if ev["Type"] == "DynamoDB":
                    actions -= {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
        want = set(expected)
        for a in sorted(want - actions):
            problem(f"{name} may not call {a}, which its code calls")
        for a in sorted(actions - want):
            problem(f"{name} may call {a}, which its code never calls")
    # Resource "*" only for actions that have no resource-level permissions (the Service
    # Authorization Reference; see aws-tooling notes), never to save writing an ARN.
    no_resource_level = ("ec2:Describe", "states:SendTask", "ssm:GetCommandInvocation",
                         "ssm:ListCommands", "logs:", "xray:")
    for name, res in resources.items():
        if res["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            docs = [res["Properties"]["PolicyDocument"]]
        else:
            continue
        for doc in docs:
            for st in doc.get("Statement", []):
                r = st.get("Resource")
                if r == "*" or (isinstance(r, list) and "*" in r):
                    acts = st.get("Action", [])
                    for a in [acts] if isinstance(acts, str) else acts:
                        if not a.startswith(no_resource_level):
                            problem(f"{name} allows {a} on every resource")
    # A role passed that is not one of the stack's own (the launch roles LaunchApp hands to
    # CloudFormation, a pattern) goes to one service only; the launcher touches only the
    # applications' stacks, sms-app-<id>.
    for name, res in resources.items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        for p in res["Properties"].get("Policies", []):
            for st in p["PolicyDocument"].get("Statement", []):
                acts = st.get("Action", [])
                acts = [acts] if isinstance(acts, str) else acts
                targets = st.get("Resource", [])
                targets = targets if isinstance(targets, list) else [targets]
                texts = [str(resolve_sub(t)) for t in targets]
                foreign = [t for t, raw in zip(texts, targets) if not (isinstance(raw, dict) and "Fn::GetAtt" in raw)]
                if "iam:PassRole" in acts and foreign:
                    passed = st.get("Condition", {}).get("StringEquals", {}).get("iam:PassedToService")
                    if not passed:
                        problem(f"{name} passes roles {foreign} to any service (no iam:PassedToService)")
                if any(a.startswith("cloudformation:") for a in acts):
                    if not all(t.endswith(":stack/sms-app-*/*") for t in texts):
                        problem(f"{name} may use CloudFormation on {texts}, not only the applications' stacks sms-app-*")
    for name in sorted(set(functions) - set(spec["permissions"])):
        problem(f"{name} has no expected permissions in the test")
    for name, expected in spec.get("policies", {}).items():
        if name not in managed:
            problem(f"no managed policy {name} in the transformed template")
            continue
        actions = actions_of(managed[name]["Properties"]["PolicyDocument"])
        for a in sorted(set(expected) - actions):
            problem(f"{name} does not allow {a}, which its users call")
        for a in sorted(actions - set(expected)):
            problem(f"{name} allows {a}, which its users never call")

    # The transformed stack in moto's CloudFormation.
    from moto import mock_aws
    import boto3

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="tern-artifacts")
        for name, res in template["Resources"].items():
            if res["Type"] == "AWS::Serverless::Function":
                s3.put_object(Bucket="tern-artifacts", Key=f"{name}.zip", Body=b"PK\x05\x06" + b"\x00" * 18)
        cfn = boto3.client("cloudformation")
        cfn.create_stack(
            StackName="tern",
            TemplateBody=json.dumps(out),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        stack = cfn.describe_stacks(StackName="tern")["Stacks"][0]
        if stack["StackStatus"] != "CREATE_COMPLETE":
            problem(f"moto's CloudFormation: {stack['StackStatus']} {stack.get('StackStatusReason', '')}")
        made = {r["LogicalResourceId"]: r for r in cfn.list_stack_resources(StackName="tern")["StackResourceSummaries"]}
        for needed in ["Table", "StagingBucket", "ReplicationRunStateMachine", "VmImportRole"] + list(functions):
            if needed not in made:
                problem(f"moto's stack has no {needed}")
        table = boto3.client("dynamodb").describe_table(TableName=made["Table"]["PhysicalResourceId"])["Table"]
        if table.get("StreamSpecification", {}).get("StreamViewType") != "NEW_IMAGE":
            problem("the table has no NEW_IMAGE stream in moto's stack")
        mappings = boto3.client("lambda").list_event_source_mappings()["EventSourceMappings"]
        if not any(m.get("EventSourceArn", "").startswith(table["TableArn"]) for m in mappings):
            problem("no event source mapping from the table's stream in moto's stack")
        print(f"moto stack: {len(made)} resources, status {stack['StackStatus']}")

    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
