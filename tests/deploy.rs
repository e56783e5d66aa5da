//! What an operator installs — the Helm chart and the plain manifests — against a real
//! kube-apiserver: every object is accepted with strict field validation (including the
//! ServiceMonitor and PrometheusRule, checked by the prometheus-operator CRDs, and the opt-in
//! agent's DaemonSet and ValidatingAdmissionPolicy), and the shipped RBAC lets pulsecheck's
//! ServiceAccount, and the agent's, do exactly what each calls and nothing more.
//!
//! Tools: helm and kubectl from `bash tools/build.sh --print` (helm is built on first use), the
//! CRDs from the Go module pinned in tools/crds (`bash tools/build.sh crds`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use pulsecheck_lab::controlplane::{ControlPlane, ControlPlaneOptions};
use tokio::io::AsyncWriteExt;

/// Generous: CI runs several control planes on two cores.
const DEADLINE: Duration = Duration::from_secs(120);
const SERVICE_ACCOUNT: &str = "system:serviceaccount:pulsecheck:pulsecheck";
const AGENT_SERVICE_ACCOUNT: &str = "system:serviceaccount:pulsecheck:pulsecheck-agent";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `bash tools/build.sh ARG` and returns the last line it prints (a folder).
fn build_sh(arg: &str) -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(repo().join("tools/build.sh"))
        .arg(arg)
        .current_dir(repo())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash tools/build.sh {arg}: {e}"));
    assert!(out.status.success(), "bash tools/build.sh {arg} failed ({})", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(!last.is_empty(), "bash tools/build.sh {arg} printed no folder");
    PathBuf::from(last)
}

struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
    crds: PathBuf,
}

/// Located (and helm built) once per test binary, so parallel tests never build twice.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let bin = build_sh("--print");
        let helm = bin.join("helm");
        if !helm.is_file() {
            build_sh("helm");
        }
        assert!(helm.is_file(), "no helm in {} after `bash tools/build.sh helm`", bin.display());
        let kubectl = bin.join("kubectl");
        assert!(kubectl.is_file(), "no kubectl in {}: run `bash tools/build.sh kubectl`", bin.display());
        let crds = build_sh("crds");
        for crd in ["monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"] {
            assert!(crds.join(crd).is_file(), "{crd} missing in {}", crds.display());
        }
        Tools { helm, kubectl, crds }
    })
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish within {DEADLINE:?}", program.display()))
        .expect("wait for child");
    Output { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// kubectl as admin against `cp`, with its discovery cache inside the control plane's folder.
async fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Output {
    let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    let cache = cp.dir().join("kubectl-cache").to_string_lossy().into_owned();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str(), "--cache-dir", cache.as_str()];
    all.extend_from_slice(args);
    run(&tools().kubectl, &all, stdin).await
}

async fn start() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|err| panic!("{err}"))
}

/// ServiceMonitor and PrometheusRule CRDs, established.
async fn install_prometheus_operator_crds(cp: &ControlPlane) {
    let crds = &tools().crds;
    let sm = crds.join("monitoring.coreos.com_servicemonitors.yaml").to_string_lossy().into_owned();
    let pr = crds.join("monitoring.coreos.com_prometheusrules.yaml").to_string_lossy().into_owned();
    // Server-side: the CRDs are too large for client-side apply's last-applied annotation.
    let out = kubectl(cp, &["apply", "--server-side", "-f", &sm, "-f", &pr], None).await;
    assert!(out.ok, "installing the CRDs failed:\n{}{}", out.stdout, out.stderr);
    let out = kubectl(
        cp,
        &["wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com", "--timeout=120s"],
        None,
    )
    .await;
    assert!(out.ok, "the CRDs never became Established:\n{}{}", out.stdout, out.stderr);
}

async fn create_namespace(cp: &ControlPlane, name: &str) {
    let api: Api<Namespace> = Api::all(cp.client());
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    api.create(&PostParams::default(), &ns).await.unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// `kubectl apply` with strict field validation; retried only while the apiserver's discovery
/// does not list the freshly established CRDs yet.
async fn apply(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["apply", "--validate=strict"];
    all.extend_from_slice(args);
    let started = Instant::now();
    loop {
        let out = kubectl(cp, &all, stdin).await;
        let discovery_lag = out.stderr.contains("ensure CRDs are installed first") || out.stderr.contains("no matches for kind");
        if out.ok || !discovery_lag || started.elapsed() > DEADLINE {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn helm_template(sets: &[&str]) -> String {
    helm_template_for(&[], sets).await
}

/// The API versions helm is told the cluster serves where prometheus-operator's CRDs are installed.
const MONITORING_API: [&str; 4] = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"];

async fn helm_template_for(cluster: &[&str], sets: &[&str]) -> String {
    let chart = repo().join("charts/pulsecheck").to_string_lossy().into_owned();
    let mut args = vec!["template", "pulsecheck", chart.as_str(), "--namespace", "pulsecheck"];
    args.extend_from_slice(cluster);
    for set in sets {
        args.extend_from_slice(&["--set", set]);
    }
    let out = run(&tools().helm, &args, None).await;
    assert!(out.ok, "helm template {sets:?} failed:\n{}", out.stderr);
    out.stdout
}

/// Every object pulsecheck ships, as kubectl names them.
const SHIPPED: &[&str] = &[
    "serviceaccount/pulsecheck",
    "clusterrole.rbac.authorization.k8s.io/pulsecheck",
    "clusterrolebinding.rbac.authorization.k8s.io/pulsecheck",
    "clusterrole.rbac.authorization.k8s.io/pulsecheck-check",
    "role.rbac.authorization.k8s.io/pulsecheck-node-leases",
    "rolebinding.rbac.authorization.k8s.io/pulsecheck-node-leases",
    "role.rbac.authorization.k8s.io/pulsecheck-events",
    "rolebinding.rbac.authorization.k8s.io/pulsecheck-events",
    "role.rbac.authorization.k8s.io/pulsecheck-leader-election",
    "rolebinding.rbac.authorization.k8s.io/pulsecheck-leader-election",
    "deployment.apps/pulsecheck",
    "resourcequota/pulsecheck-critical-pods",
    "service/pulsecheck",
    "configmap/pulsecheck-dashboard",
    "servicemonitor.monitoring.coreos.com/pulsecheck",
    "prometheusrule.monitoring.coreos.com/pulsecheck",
];

/// The opt-in node agent's objects (`agent.enabled=true`, `manifests/components/agent`).
const AGENT: &[&str] = &[
    "serviceaccount/pulsecheck-agent",
    "role.rbac.authorization.k8s.io/pulsecheck-agent",
    "rolebinding.rbac.authorization.k8s.io/pulsecheck-agent",
    "daemonset.apps/pulsecheck-agent",
    "validatingadmissionpolicy.admissionregistration.k8s.io/pulsecheck-agent",
    "validatingadmissionpolicybinding.admissionregistration.k8s.io/pulsecheck-agent",
    "resourcequota/pulsecheck-agent-critical-pods",
];

fn assert_all_created(what: &str, out: &Output, expected: &[&str]) {
    assert!(out.ok, "{what} was rejected by the apiserver:\n{}{}", out.stdout, out.stderr);
    let missing: Vec<_> = expected.iter().filter(|o| !out.stdout.contains(&format!("{o} created"))).collect();
    assert!(missing.is_empty(), "{what}: not created: {missing:?}\n{}{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn chart_and_manifests_are_accepted_by_a_real_apiserver() {
    tools();
    let cp = start().await;
    install_prometheus_operator_crds(&cp).await;
    create_namespace(&cp, "pulsecheck").await;

    let out = apply(&cp, &["--dry-run=server", "-k", "deploy/kustomize/with-monitoring"], None).await;
    assert_all_created("kubectl apply -k deploy/kustomize/with-monitoring/", &out, SHIPPED);
    // The base alone: everything but prometheus-operator's objects.
    let out = apply(&cp, &["--dry-run=server", "-k", "manifests"], None).await;
    let base: Vec<&str> = SHIPPED.iter().copied().filter(|o| !o.contains(".monitoring.coreos.com/")).collect();
    assert_all_created("kubectl apply -k manifests/", &out, &base);
    assert!(!out.stdout.contains("monitoring.coreos.com"), "{}", out.stdout);

    let variants: &[(&str, &[&str])] = &[
        ("default values", &[]),
        ("apiserver-proxy probe with nodes/proxy", &["rbac.nodesProxy=true", "config.probe=apiserver-proxy"]),
        (
            "cordon and taint with NoExecute, json logs, no per-node metrics, two replicas",
            &[
                "config.action={taint,cordon}",
                "config.taintEffect=NoExecute",
                "config.logFormat=json",
                "config.perNodeMetrics=false",
                "replicas=2",
                "priorityClassName=system-cluster-critical",
            ],
        ),
    ];
    for (what, sets) in variants {
        let rendered = helm_template_for(&MONITORING_API, sets).await;
        let out = apply(&cp, &["--dry-run=server", "-f", "-"], Some(&rendered)).await;
        assert_all_created(&format!("helm template with {what}"), &out, SHIPPED);
    }

    // The opt-in objects: a disruption budget for two replicas, a network policy, a zone spread,
    // the uninstall cleanup hook (its objects are in `helm template`'s output too).
    let rendered = helm_template_for(
        &MONITORING_API,
        &[
            "replicas=2",
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
            "cleanupOnUninstall.enabled=true",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        ],
    )
    .await;
    let out = apply(&cp, &["--dry-run=server", "-f", "-"], Some(&rendered)).await;
    let opt_in: Vec<&str> = SHIPPED
        .iter()
        .copied()
        .chain([
            "poddisruptionbudget.policy/pulsecheck",
            "networkpolicy.networking.k8s.io/pulsecheck",
            "serviceaccount/pulsecheck-cleanup",
            "clusterrole.rbac.authorization.k8s.io/pulsecheck-cleanup",
            "clusterrolebinding.rbac.authorization.k8s.io/pulsecheck-cleanup",
            "role.rbac.authorization.k8s.io/pulsecheck-cleanup",
            "rolebinding.rbac.authorization.k8s.io/pulsecheck-cleanup",
            "job.batch/pulsecheck-cleanup",
        ])
        .collect();
    assert_all_created("helm template with the opt-in objects", &out, &opt_in);

    // The opt-in node agent: the overlay with its component (the Namespace relabelled for the
    // privileged Pod Security level), and the chart with agent.enabled, alone and with the
    // controller's priority class and another kubelet root dir.
    let with_agent: Vec<&str> = base.iter().chain(AGENT).copied().collect();
    let out = apply(&cp, &["--dry-run=server", "-k", "deploy/kustomize/with-agent"], None).await;
    assert_all_created("kubectl apply -k deploy/kustomize/with-agent/", &out, &with_agent);
    assert!(out.stdout.contains("namespace/pulsecheck configured"), "the component relabels the Namespace:\n{}", out.stdout);
    for (what, sets) in [
        ("the agent", &["agent.enabled=true"][..]),
        (
            "the agent under the controller's priority class, another kubelet root, extra flags",
            &[
                "agent.enabled=true",
                "agent.priorityClassName=system-cluster-critical",
                "agent.kubeletRootDir=/data/kubelet",
                "agent.extraArgs={--disk-interval=2s}",
            ][..],
        ),
    ] {
        let rendered = helm_template_for(&MONITORING_API, sets).await;
        let out = apply(&cp, &["--dry-run=server", "-f", "-"], Some(&rendered)).await;
        let mut expected: Vec<&str> = SHIPPED.iter().chain(AGENT).copied().collect();
        if sets.contains(&"agent.priorityClassName=system-cluster-critical") {
            // One class for both: the controller's quota admits the agents too.
            expected.retain(|o| *o != "resourcequota/pulsecheck-agent-critical-pods");
        }
        assert_all_created(&format!("helm template with {what}"), &out, &expected);
    }

    // Without prometheus-operator objects and with an existing ServiceAccount: nothing else is needed.
    let rendered = helm_template(&[
        "serviceMonitor.enabled=false",
        "prometheusRule.enabled=false",
        "dashboard.enabled=false",
        "serviceAccount.create=false",
        "serviceAccount.name=default",
        "config.leaderElect=false",
    ])
    .await;
    assert!(!rendered.contains("kind: ServiceMonitor") && !rendered.contains("kind: PrometheusRule"), "{rendered}");
    assert!(!rendered.contains("pulsecheck-leader-election"), "leader-election RBAC rendered without leader election");
    let out = apply(&cp, &["--dry-run=server", "-f", "-"], Some(&rendered)).await;
    assert_all_created("helm template, minimal", &out, &["deployment.apps/pulsecheck", "clusterrole.rbac.authorization.k8s.io/pulsecheck"]);

    cp.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn shipped_rbac_lets_pulsecheck_do_its_job_and_nothing_more() {
    tools();
    let cp = start().await;
    install_prometheus_operator_crds(&cp).await;
    let out = apply(&cp, &["-k", "manifests"], None).await;
    assert!(out.ok, "kubectl apply -k manifests/ failed:\n{}{}", out.stdout, out.stderr);

    // (verb, resource, subresource, namespace ("*" = all), allowed)
    let checks: &[(&str, &str, &str, &str, bool)] = &[
        // What pulsecheck calls.
        ("get", "nodes", "", "", true),
        ("list", "nodes", "", "", true),
        ("watch", "nodes", "", "", true),
        ("patch", "nodes", "", "", true),
        ("patch", "nodes", "status", "", true),
        ("get", "nodes", "healthz", "", true),
        ("get", "nodes", "configz", "", true),
        ("get", "leases.coordination.k8s.io", "", "kube-node-lease", true),
        ("list", "leases.coordination.k8s.io", "", "kube-node-lease", true),
        ("watch", "leases.coordination.k8s.io", "", "kube-node-lease", true),
        ("create", "events.events.k8s.io", "", "default", true),
        ("patch", "events.events.k8s.io", "", "default", true),
        ("get", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("create", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("update", "leases.coordination.k8s.io", "", "pulsecheck", true),
        // The node agents' Leases (pulsecheck-agent-<node>), watched.
        ("list", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("watch", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("patch", "leases.coordination.k8s.io", "", "pulsecheck", false),
        // What it must never be able to do.
        ("delete", "nodes", "", "", false),
        ("update", "nodes", "", "", false),
        ("create", "nodes", "", "", false),
        ("update", "nodes", "status", "", false),
        ("get", "nodes", "proxy", "", false),
        ("create", "pods", "exec", "default", false),
        ("create", "pods", "eviction", "default", false),
        ("list", "pods", "", "*", false),
        ("get", "secrets", "", "pulsecheck", false),
        ("list", "secrets", "", "*", false),
        ("patch", "leases.coordination.k8s.io", "", "kube-node-lease", false),
        ("delete", "leases.coordination.k8s.io", "", "pulsecheck", false),
        ("create", "events.events.k8s.io", "", "pulsecheck", false),
        ("patch", "configmaps", "", "pulsecheck", false),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", "", false),
    ];
    assert_can_i(&cp, SERVICE_ACCOUNT, checks).await;

    // The opt-in agent: its own node's Lease (which one is the admission policy's to say,
    // tests/agent_admission.rs), nothing else; the controller's rights unchanged.
    let out = apply(&cp, &["-k", "deploy/kustomize/with-agent"], None).await;
    assert!(out.ok, "kubectl apply -k deploy/kustomize/with-agent/ failed:\n{}{}", out.stdout, out.stderr);
    let agent_checks: &[(&str, &str, &str, &str, bool)] = &[
        ("get", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("create", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("update", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("list", "leases.coordination.k8s.io", "", "pulsecheck", false),
        ("watch", "leases.coordination.k8s.io", "", "pulsecheck", false),
        ("patch", "leases.coordination.k8s.io", "", "pulsecheck", false),
        // Never used, but what OwnerReferencesPermissionEnforcement asks of an owner change;
        // the admission policy confines it to the agent's own Lease (tests/agent_admission.rs).
        ("delete", "leases.coordination.k8s.io", "", "pulsecheck", true),
        ("delete", "leases.coordination.k8s.io", "", "kube-node-lease", false),
        ("get", "leases.coordination.k8s.io", "", "kube-node-lease", false),
        ("update", "leases.coordination.k8s.io", "", "kube-node-lease", false),
        ("get", "nodes", "", "", false),
        ("patch", "nodes", "status", "", false),
        ("get", "pods", "", "pulsecheck", false),
        ("get", "secrets", "", "pulsecheck", false),
        ("create", "events.events.k8s.io", "", "default", false),
    ];
    assert_can_i(&cp, AGENT_SERVICE_ACCOUNT, agent_checks).await;
    assert_can_i(&cp, SERVICE_ACCOUNT, checks).await;

    cp.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

/// `kubectl auth can-i` for each (verb, resource, subresource, namespace ("*" = all), allowed)
/// as `user`; panics listing every answer that is not the one expected.
async fn assert_can_i(cp: &ControlPlane, user: &str, checks: &[(&str, &str, &str, &str, bool)]) {
    let mut wrong = Vec::new();
    for (verb, resource, subresource, namespace, allowed) in checks {
        let subresource_flag = format!("--subresource={subresource}");
        let as_flag = format!("--as={user}");
        let mut args = vec!["auth", "can-i", *verb, *resource, as_flag.as_str()];
        if !subresource.is_empty() {
            args.push(&subresource_flag);
        }
        match *namespace {
            "" => {}
            "*" => args.push("--all-namespaces"),
            ns => args.extend_from_slice(&["--namespace", ns]),
        }
        let out = kubectl(cp, &args, None).await;
        let answer = out.stdout.trim();
        assert!(answer == "yes" || answer == "no", "kubectl {args:?} answered neither yes nor no:\n{}{}", out.stdout, out.stderr);
        if (answer == "yes") != *allowed {
            wrong.push(format!(
                "{verb} {resource}{}{} -> {answer}",
                if subresource.is_empty() { String::new() } else { format!("/{subresource}") },
                if namespace.is_empty() { String::new() } else { format!(" in {namespace}") }
            ));
        }
    }
    assert!(wrong.is_empty(), "the shipped RBAC of {user} is wrong:\n  {}", wrong.join("\n  "));
}

/// The `args` of the pulsecheck container in a rendered Deployment.
fn container_args(rendered: &str) -> Vec<String> {
    for doc in serde_yaml_ng::Deserializer::from_str(rendered) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).expect("rendered YAML parses");
        if value.get("kind").and_then(|k| k.as_str()) != Some("Deployment") {
            continue;
        }
        let args = &value["spec"]["template"]["spec"]["containers"][0]["args"];
        let args: Vec<String> = args.as_sequence().expect("container args").iter().map(|a| a.as_str().expect("string arg").to_owned()).collect();
        return args;
    }
    panic!("no Deployment in:\n{rendered}");
}

fn parse_run(what: &str, args: &[String]) -> Box<pulsecheck::config::RunArgs> {
    use clap::Parser;
    let argv = std::iter::once("pulsecheck".to_owned()).chain(args.iter().cloned());
    match pulsecheck::cli::Cli::try_parse_from(argv) {
        Ok(pulsecheck::cli::Cli { command: pulsecheck::cli::Command::Run(run) }) => run,
        Ok(_) => panic!("{what}: {args:?} is not `pulsecheck run`"),
        Err(e) => panic!("{what}: pulsecheck rejects the container args {args:?}:\n{e}"),
    }
}

#[tokio::test]
async fn container_args_of_chart_and_manifests_are_accepted_by_pulsecheck_run() {
    let manifests = std::fs::read_to_string(repo().join("manifests/deployment.yaml")).expect("read manifests/deployment.yaml");
    let from_manifests = container_args(&manifests);
    let run = parse_run("manifests/deployment.yaml", &from_manifests);
    assert!(run.leader.leader_elect && run.metrics.per_node_metrics == pulsecheck::metrics::PerNodeMetrics::Unhealthy && !run.action.dry_run, "{run:?}");
    assert_eq!(run.admin.admin_addr.port(), 8080, "the admin port must be the container port 8080");

    let from_chart = container_args(&helm_template(&[]).await);
    assert_eq!(from_chart, from_manifests, "chart defaults and manifests pass different args");

    let tuned = container_args(
        &helm_template(&[
            "config.action={taint,cordon}",
            "config.taintEffect=NoExecute",
            "config.statusStaleAfter=15m",
            "config.maxUnhealthy=12.5",
            "config.perNodeMetrics=false",
            "config.dryRun=true",
            "config.nodeSelector=pool=general",
            "config.identity=me",
            "extraArgs={--log-format=json}",
        ])
        .await,
    );
    let run = parse_run("helm template with tuned values", &tuned);
    assert_eq!(run.action.action, vec![pulsecheck::actuate::Action::Taint, pulsecheck::actuate::Action::Cordon]);
    assert_eq!(run.action.taint_effect, pulsecheck::actuate::TaintEffect::NoExecute);
    assert_eq!(run.thresholds.status_stale_after, Duration::from_secs(15 * 60));
    assert_eq!(run.guard.max_unhealthy, 12.5);
    assert!(run.metrics.per_node_metrics == pulsecheck::metrics::PerNodeMetrics::None && run.action.dry_run);
    assert_eq!(run.action.node_selector, "pool=general");
    assert_eq!(run.leader.identity.as_deref(), Some("me"));
    assert_eq!(run.admin.log_format, pulsecheck::admin::LogFormat::Json);
}
