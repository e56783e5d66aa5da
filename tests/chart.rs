//! The chart's defaults, as an operator installing it on an ordinary cluster relies on them
//! (issue "Install it as a user would"): `helm template` of `charts/pulsecheck`, with and without
//! the prometheus-operator CRDs present, read back as objects.

mod common;

use common::{repo, tool};
use serde_yaml_ng::Value;

/// The API versions `helm template` is told the cluster serves when prometheus-operator is there.
const MONITORING_CRDS: [&str; 2] = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"];

/// `helm template pulsecheck charts/pulsecheck -n pulsecheck ARGS`: the objects, or helm's error.
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "pulsecheck"])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", "pulsecheck"])
        .args(args)
        .output()
        .expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    Ok(serde_yaml_ng::Deserializer::from_str(&text).map(|doc| Value::deserialize(doc).expect("helm renders YAML")).filter(|v| !v.is_null()).collect())
}

use serde::Deserialize as _;

fn with_crds(extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<&str> = MONITORING_CRDS.iter().flat_map(|v| ["--api-versions", *v]).collect();
    args.extend_from_slice(extra);
    render(&args).unwrap_or_else(|e| panic!("{e}"))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap_or_default().to_owned()).collect()
}

fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(objects)))
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

#[test]
fn the_chart_installs_on_a_cluster_without_prometheus_operator_and_brings_its_monitoring_where_it_exists() {
    let plain = render(&[]).unwrap_or_else(|e| panic!("{e}"));
    let plain_kinds = kinds(&plain);
    assert!(!plain_kinds.iter().any(|k| k == "ServiceMonitor" || k == "PrometheusRule"), "without the CRDs: {plain_kinds:?}");
    assert!(plain_kinds.iter().any(|k| k == "Deployment"));

    let monitored = kinds(&with_crds(&[]));
    assert!(monitored.iter().any(|k| k == "ServiceMonitor") && monitored.iter().any(|k| k == "PrometheusRule"), "with the CRDs: {monitored:?}");
    // Either can be switched off, or forced on (a GitOps render that cannot see the cluster).
    let off = kinds(&with_crds(&["--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false"]));
    assert!(!off.iter().any(|k| k == "ServiceMonitor" || k == "PrometheusRule"), "{off:?}");
    let forced = kinds(&render(&["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"]).unwrap());
    assert!(forced.iter().any(|k| k == "ServiceMonitor") && forced.iter().any(|k| k == "PrometheusRule"), "{forced:?}");
    // The group-version alone, as `helm template --api-versions monitoring.coreos.com/v1` says it.
    let group = kinds(&render(&["--api-versions", "monitoring.coreos.com/v1"]).unwrap());
    assert!(group.iter().any(|k| k == "ServiceMonitor") && group.iter().any(|k| k == "PrometheusRule"), "{group:?}");
    let wrong = render(&["--set", "serviceMonitor.enabled=sometimes"]).unwrap_err();
    assert!(wrong.contains("serviceMonitor") && wrong.contains("enabled"), "{wrong}");
}

#[test]
fn kube_prometheus_stack_picks_up_the_metrics_and_every_alert_from_one_value_whatever_the_chart_is_called() {
    let objects = with_crds(&["--set", "prometheusRelease=kube-prometheus-stack", "--set", "nameOverride=heartbeat"]);
    let monitor = the(&objects, "ServiceMonitor");
    let rule = the(&objects, "PrometheusRule");
    for object in [monitor, rule] {
        assert_eq!(label(object, "release"), Some("kube-prometheus-stack"), "{object:?}");
    }
    // The alert rules select job="pulsecheck"; the scrape job is that, whatever nameOverride is.
    let relabelings = &monitor["spec"]["endpoints"][0]["relabelings"];
    assert!(
        relabelings
            .as_sequence()
            .is_some_and(|r| r.iter().any(|r| r["targetLabel"].as_str() == Some("job") && r["replacement"].as_str() == Some("pulsecheck"))),
        "{monitor:?}"
    );
    assert!(monitor["spec"]["jobLabel"].is_null(), "the job must not follow a label that nameOverride changes");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter().filter_map(|r| r["alert"].as_str()))
        .collect();
    assert!(alerts.contains(&"PulsecheckDown"), "the dead-man alert loads with the rest: {alerts:?}");
    let expressions = serde_yaml_ng::to_string(&rule["spec"]).unwrap();
    assert!(expressions.contains(r#"job="pulsecheck""#), "{expressions}");
    // Without the value, no release label: nothing is claimed for a Prometheus that is not there.
    assert_eq!(label(the(&with_crds(&[]), "ServiceMonitor"), "release"), None);
    // With an additional label of the same key as well, one label (prometheusRelease wins), not a
    // duplicate key.
    let both = with_crds(&[
        "--set",
        "prometheusRelease=kps",
        "--set",
        "serviceMonitor.additionalLabels.release=old",
        "--set",
        "serviceMonitor.additionalLabels.team=infra",
    ]);
    let monitor = the(&both, "ServiceMonitor");
    assert_eq!((label(monitor, "release"), label(monitor, "team")), (Some("kps"), Some("infra")));
}

#[test]
fn the_safety_net_is_not_the_first_pod_evicted_and_rolls_out_without_a_second_actor() {
    let objects = render(&[]).unwrap();
    let deployment = the(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["spec"]["priorityClassName"].as_str(), Some("system-cluster-critical"));
    // Where the critical classes are limited (GKE), a quota naming the class admits the Pods: the
    // replica and the one surge Pod of a rollout.
    let quota = the(&objects, "ResourceQuota");
    assert_eq!(quota["spec"]["hard"]["pods"].as_str(), Some("2"));
    assert_eq!(quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"][0].as_str(), Some("system-cluster-critical"));
    assert!(!kinds(&render(&["--set", "priorityClassName="]).unwrap()).contains(&"ResourceQuota".to_owned()));
    // Leader election (the default): the new Pod waits for the Lease the old one releases.
    assert_eq!(deployment["spec"]["strategy"]["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(), Some(0));
    // Without it, two Pods would both act: the old one goes first, and only one replica renders.
    let single = render(&["--set", "config.leaderElect=false"]).unwrap();
    assert_eq!(the(&single, "Deployment")["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    let refused = render(&["--set", "config.leaderElect=false", "--set", "replicas=2"]).unwrap_err();
    assert!(refused.contains("replicas > 1 needs config.leaderElect=true"), "{refused}");
    assert!(render(&["--set", "replicas=2"]).is_ok(), "two replicas with leader election are fine");
    // Turned off behind the chart's back, in extraArgs: the same.
    let sneaked = render(&["--set", "replicas=2", "--set", "extraArgs={--leader-elect=false}"]).unwrap_err();
    assert!(sneaked.contains("replicas > 1 needs config.leaderElect=true"), "{sneaked}");
    let one = render(&["--set", "extraArgs={--leader-elect=false}"]).unwrap();
    assert_eq!(the(&one, "Deployment")["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
}

#[test]
fn pod_template_labels_do_not_change_with_a_chart_bump() {
    let objects = render(&[]).unwrap();
    let deployment = the(&objects, "Deployment");
    let template = &deployment["spec"]["template"]["metadata"]["labels"];
    let keys: Vec<&str> = template.as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
    for key in ["helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"] {
        assert!(!keys.contains(&key), "the Pod template carries {key}: every chart bump would roll the Pod ({keys:?})");
    }
    assert_eq!(template["app.kubernetes.io/component"].as_str(), Some("controller"));
    assert_eq!(label(deployment, "app.kubernetes.io/component"), Some("controller"));
    // The selector is immutable: it holds only what never changes.
    let selector: Vec<&str> = deployment["spec"]["selector"]["matchLabels"].as_mapping().unwrap().keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(selector, ["app.kubernetes.io/name", "app.kubernetes.io/instance"]);
}

fn container_args(objects: &[Value]) -> Vec<String> {
    the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn only_what_differs_from_pulsecheck_s_defaults_is_passed_so_its_variables_and_newer_flags_work() {
    // Default values: no flag at all, so PULSECHECK_* variables (extraEnv) are not overridden.
    assert_eq!(container_args(&render(&[]).unwrap()), ["run"]);
    // A value set to its default is not passed either; a changed one is.
    let args = container_args(&render(&["--set", "config.maxUnhealthy=20", "--set", "config.statusStaleAfter=15m", "--set", "config.dryRun=true"]).unwrap());
    assert_eq!(args, ["run", "--status-stale-after=15m", "--dry-run=true"]);
    // Values kept from an older chart that lack a flag (here: removed) still render; the binary's
    // default applies.
    let args = container_args(&render(&["--set", "config.statusStaleAfter=null", "--set", "config.leaseGrace=null"]).unwrap());
    assert_eq!(args, ["run"]);
}

#[test]
fn disruption_budget_spread_and_network_policy_are_opt_in_and_select_pulsecheck_s_pods() {
    let defaults = kinds(&render(&[]).unwrap());
    assert!(!defaults.contains(&"PodDisruptionBudget".to_owned()) && !defaults.contains(&"NetworkPolicy".to_owned()), "{defaults:?}");
    let objects = render(&[
        "--set",
        "replicas=2",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "topologySpreadConstraints[0].maxSkew=1",
        "--set",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "--set",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    ])
    .unwrap();
    let deployment = the(&objects, "Deployment");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let pdb = the(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_i64(), Some(1));
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    let spread = &deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"].as_str(), Some("topology.kubernetes.io/zone"));
    assert_eq!(&spread["labelSelector"]["matchLabels"], selector, "the chart fills in the selector");
    let policy = the(&objects, "NetworkPolicy");
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    let egress_ports: Vec<i64> = policy["spec"]["egress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().unwrap().iter().filter_map(|p| p["port"].as_i64()))
        .collect();
    assert_eq!(egress_ports, [443, 6443, 10250, 53, 53], "apiserver, kubelets, DNS");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"].as_i64(), Some(8080));
    // Probes through the apiserver need no path to the kubelets.
    let proxied = render(&["--set", "networkPolicy.enabled=true", "--set", "config.probe=apiserver-proxy", "--set", "rbac.nodesProxy=true"]).unwrap();
    let ports: Vec<i64> = the(&proxied, "NetworkPolicy")["spec"]["egress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().unwrap().iter().filter_map(|p| p["port"].as_i64()))
        .collect();
    assert!(!ports.contains(&10250), "{ports:?}");
    let typo = render(&["--set", "networkPolicy.enable=true"]).unwrap_err();
    assert!(typo.contains("enable"), "{typo}");
}

#[test]
fn the_uninstall_cleanup_hook_is_opt_in_waits_for_the_release_s_leader_and_brings_its_own_least_privilege() {
    let hooked = |objects: &[Value]| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"].as_str().is_some())
            .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(hooked(&render(&[]).unwrap()), Vec::<String>::new(), "no hook by default");

    let objects =
        render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "config.leaderElectionName=pc-leader", "--set", "config.taintKey=example.com/dead"])
            .unwrap();
    let hooks: Vec<&Value> = objects.iter().filter(|o| o["metadata"]["annotations"]["helm.sh/hook"].as_str().is_some()).collect();
    let mut kinds_and_weights: Vec<(String, i64)> = hooks
        .iter()
        .map(|o| {
            assert_eq!(o["metadata"]["annotations"]["helm.sh/hook"].as_str(), Some("post-delete"), "{o:?}");
            assert_eq!(o["metadata"]["annotations"]["helm.sh/hook-delete-policy"].as_str(), Some("before-hook-creation,hook-succeeded"));
            assert_eq!(label(o, "app.kubernetes.io/component"), Some("cleanup"));
            (o["kind"].as_str().unwrap().to_owned(), o["metadata"]["annotations"]["helm.sh/hook-weight"].as_str().unwrap().parse().unwrap())
        })
        .collect();
    kinds_and_weights.sort_by_key(|(k, w)| (*w, k.clone()));
    // Identity and RBAC exist before the bindings, the bindings before the Job (the release's own
    // ServiceAccount and RBAC are deleted by then).
    assert_eq!(
        kinds_and_weights,
        [("ClusterRole", -10), ("Role", -10), ("ServiceAccount", -10), ("ClusterRoleBinding", -5), ("RoleBinding", -5), ("Job", 0)]
            .map(|(k, w)| (k.to_owned(), w))
            .to_vec()
    );
    let job = the(&objects, "Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("pulsecheck-cleanup"));
    let args: Vec<&str> = pod["containers"][0]["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, ["cleanup", "--leader-lease=pulsecheck/pc-leader", "--leader-wait=2m", "--taint-key=example.com/dead"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    // Nothing that selects the controller's Pods selects the Job's.
    assert_ne!(job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"].as_str(), Some("pulsecheck"));
    // Least privilege: Nodes read and patched, the one leader Lease read; no watch, create, delete.
    let cluster_role = hooks.iter().find(|o| o["kind"].as_str() == Some("ClusterRole")).unwrap();
    let rules = serde_yaml_ng::to_string(&cluster_role["rules"]).unwrap();
    assert_eq!(
        rules.trim(),
        "- apiGroups:\n  - ''\n  resources:\n  - nodes\n  verbs:\n  - get\n  - list\n  - patch\n- apiGroups:\n  - ''\n  resources:\n  - nodes/status\n  verbs:\n  - patch"
    );
    let role = hooks.iter().find(|o| o["kind"].as_str() == Some("Role")).unwrap();
    assert_eq!(role["rules"][0]["resourceNames"][0].as_str(), Some("pc-leader"));
    assert_eq!(role["rules"][0]["verbs"].as_sequence().map(Vec::len), Some(1));

    // An instance for one pool cleans only its pool.
    let pooled = render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "config.nodeSelector=example.com/pool=a"]).unwrap();
    let pooled_args = serde_yaml_ng::to_string(&the(&pooled, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]).unwrap();
    assert!(pooled_args.contains("--node-selector=example.com/pool=a"), "{pooled_args}");
    // It does not tolerate pulsecheck's taint: a Pod on a zombie would never start.
    assert!(!serde_yaml_ng::to_string(&pod["tolerations"]).unwrap().contains("example.com/dead"), "{:?}", pod["tolerations"]);
    // The Lease and the taint come from config: an extraArgs override would make it wait for the
    // wrong Lease and remove the wrong taint.
    let overridden = render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "extraArgs[0]=--leader-election-name=other"]).unwrap_err();
    assert!(overridden.contains("reads --leader-election-name from config"), "{overridden}");
    let by_env =
        render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "extraEnv[0].name=PULSECHECK_TAINT_KEY", "--set", "extraEnv[0].value=example.com/dead"])
            .unwrap_err();
    assert!(by_env.contains("reads what PULSECHECK_TAINT_KEY sets from config"), "{by_env}");
    // A flag that only starts like one the hook reads is fine.
    render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "extraArgs[0]=--leader-election-lease-duration=20s"]).unwrap();
    // The Job's name (its Pods' job-name label) stays within 63 characters with the longest
    // release name Helm allows.
    let long = std::process::Command::new(tool("helm"))
        .args(["template", &"r".repeat(53)])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", "pulsecheck", "--set", "cleanupOnUninstall.enabled=true"])
        .output()
        .unwrap();
    let long = String::from_utf8_lossy(&long.stdout);
    let job_name = long.split("kind: Job").nth(1).and_then(|job| job.lines().find_map(|l| l.trim().strip_prefix("name: "))).expect("a Job").to_owned();
    assert!(job_name.len() <= 63, "{job_name}");
    // Without leader election the hook could not tell when the uninstalled Pod stopped writing.
    let refused = render(&["--set", "cleanupOnUninstall.enabled=true", "--set", "config.leaderElect=false"]).unwrap_err();
    assert!(refused.contains("cleanupOnUninstall needs config.leaderElect=true"), "{refused}");
}

#[test]
fn the_critical_pods_quota_is_never_rendered_into_kube_system() {
    let quota = |namespace: &str| {
        let out = std::process::Command::new(tool("helm"))
            .args(["template", "pulsecheck"])
            .arg(repo().join("charts/pulsecheck"))
            .args(["--namespace", namespace])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("kind: ResourceQuota")
    };
    assert!(quota("pulsecheck"), "a namespace of its own gets the quota that admits its critical Pods");
    // kube-system admits the critical classes without a quota, and a quota of replicas + 1
    // critical Pods would refuse CoreDNS and the rest.
    assert!(!quota("kube-system"));
}

/// The objects that belong to the node agent (label `app.kubernetes.io/component: agent`).
fn agent_objects(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter(|o| label(o, "app.kubernetes.io/component") == Some("agent"))
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or_default(), o["metadata"]["name"].as_str().unwrap_or_default()))
        .collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds(objects)))
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

#[test]
fn the_node_agent_is_opt_in_and_nothing_of_it_renders_by_default() {
    for objects in [render(&[]).unwrap(), with_crds(&[])] {
        assert_eq!(agent_objects(&objects), Vec::<String>::new());
        let kinds = kinds(&objects);
        for kind in ["DaemonSet", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
            assert!(!kinds.iter().any(|k| k == kind), "{kind} rendered with default values: {kinds:?}");
        }
        assert!(!objects.iter().any(|o| o["metadata"]["name"].as_str().is_some_and(|n| n.contains("agent-critical"))), "{kinds:?}");
    }
    let on = agent_objects(&render(&["--set", "agent.enabled=true"]).unwrap());
    assert_eq!(
        on,
        [
            "ResourceQuota/pulsecheck-agent-critical-pods",
            "ServiceAccount/pulsecheck-agent",
            "Role/pulsecheck-agent",
            "RoleBinding/pulsecheck-agent",
            "DaemonSet/pulsecheck-agent",
            "ValidatingAdmissionPolicy/pulsecheck-agent",
            "ValidatingAdmissionPolicyBinding/pulsecheck-agent",
        ]
    );
    let typo = render(&["--set", "agent.enable=true"]).unwrap_err();
    assert!(typo.contains("enable"), "{typo}");
}

#[test]
fn the_controller_counts_agent_reports_only_where_the_chart_installs_the_agent_and_its_policy() {
    // Without the admission policy anyone allowed to write Leases in the namespace could forge
    // a report: no agent, no agent evidence.
    assert!(!container_args(&render(&[]).unwrap()).iter().any(|a| a.starts_with("--agent-evidence")));
    assert_eq!(container_args(&render(&["--set", "agent.enabled=true"]).unwrap()), ["run", "--agent-evidence=true"]);
    // Given in extraArgs it is passed once (pulsecheck rejects a flag given twice).
    let args = container_args(&render(&["--set", "agent.enabled=true", "--set", "extraArgs[0]=--agent-evidence=false"]).unwrap());
    assert_eq!(args, ["run", "--agent-evidence=false"]);
}

#[test]
fn the_agent_runs_on_every_node_from_the_controller_s_image_as_non_root_without_any_capability_in_the_guaranteed_class() {
    let objects = render(&["--set", "agent.enabled=true", "--set", "image.tag=9.9.9", "--set", "image.pullPolicy=Always"]).unwrap();
    let controller = &the(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let daemonset = the(&objects, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["containers"].as_sequence().map(Vec::len), Some(1));
    // The same image, another binary in it.
    assert_eq!(container["image"], controller["image"]);
    assert_eq!(container["image"].as_str(), Some("ghcr.io/pulsecheck/pulsecheck:9.9.9"));
    assert_eq!(container["imagePullPolicy"].as_str(), Some("Always"));
    assert_eq!(strings(&container["command"]), ["/pulsecheck-agent"]);
    assert_eq!(
        strings(&container["args"]),
        ["--scratch-dir=/var/lib/kubelet/pods/$(POD_UID)/volumes/kubernetes.io~empty-dir/scratch", "--scratch-mount=/scratch"]
    );
    // Who and where it is, from the downward API.
    let env: Vec<(&str, &str)> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()))
        .collect();
    assert_eq!(env, [("NODE_NAME", "spec.nodeName"), ("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid")]);
    // Not root: its only writable path is an emptyDir (the kubelet makes it 0777).
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsGroup"].as_i64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let hardening = &container["securityContext"];
    assert_eq!(hardening["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(hardening["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(hardening["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&hardening["capabilities"]["drop"]), ["ALL"]);
    assert!(hardening["capabilities"]["add"].is_null(), "{hardening:?}");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null() && container["ports"].is_null(), "no host namespaces, no ports: {pod:?}");
    // On every node, whatever taints it: its evidence matters most on a node that is tainted.
    assert_eq!(serde_yaml_ng::to_string(&pod["tolerations"]).unwrap().trim(), "- operator: Exists");
    assert!(pod["nodeSelector"].is_null() && pod["affinity"].is_null(), "{pod:?}");
    assert_eq!(pod["priorityClassName"].as_str(), Some("system-node-critical"));
    // One hostPath, the host's os-release, read-only; the probe file in an emptyDir on the disk.
    let volumes = serde_yaml_ng::to_string(&pod["volumes"]).unwrap();
    assert_eq!(volumes.trim(), "- name: os-release\n  hostPath:\n    path: /etc/os-release\n    type: File\n- name: scratch\n  emptyDir:\n    sizeLimit: 1Mi");
    let mounts: Vec<(&str, &str, bool)> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap(), m["readOnly"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(mounts, [("os-release", "/host/etc/os-release", true), ("scratch", "/scratch", false)]);
    // Its token is the Pod's projected one (bound to the Pod, so it names the node).
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true));
    assert_eq!(pod["serviceAccountName"].as_str(), Some("pulsecheck-agent"));
    // Tiny, Guaranteed (requests = limits: never swapped out to the disk it watches), and
    // rolled a tenth of the fleet at a time, no surge (a second critical Pod per node would
    // preempt workloads on full nodes).
    assert_eq!(container["resources"]["requests"], container["resources"]["limits"]);
    assert_eq!((container["resources"]["limits"]["cpu"].as_str(), container["resources"]["limits"]["memory"].as_str()), (Some("10m"), Some("32Mi")));
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((rolling["maxUnavailable"].as_str(), rolling["maxSurge"].as_i64()), (Some("10%"), Some(0)));
    // Stopped with its disk in trouble, it may stay long enough for a hung fsync to condemn
    // (4 x the controller's --agent-disk-after, 30 s) and a minute more for the report to reach it.
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(180));
    let grace = |after: &str, grace: &str| {
        render(&[
            "--set",
            "agent.enabled=true",
            "--set-string",
            &format!("config.agentDiskAfter={after}"),
            "--set",
            &format!("agent.terminationGracePeriodSeconds={grace}"),
        ])
    };
    let short = grace("30s", "179").unwrap_err();
    assert!(short.contains("agent.terminationGracePeriodSeconds (179) must be at least 180") && short.contains("config.agentDiskAfter (30s)"), "{short}");
    let short = grace("1m30s", "400").unwrap_err();
    assert!(short.contains("agent.terminationGracePeriodSeconds (400) must be at least 420"), "{short}");
    assert!(grace("2m", "540").is_ok() && grace("20s", "140").is_ok() && grace("1m 30sec", "420").is_ok());
    // Every unit pulsecheck reads: an hour needs more than the default.
    let short = grace("1h", "180").unwrap_err();
    assert!(short.contains("must be at least 14460"), "{short}");
    assert!(grace("2 min", "479").unwrap_err().contains("must be at least 540"));
    // Under a second counts nothing; a form the chart cannot read is left to the operator.
    assert!(grace("500ms", "60").is_ok() && grace("1.5m", "60").is_ok());
    let unset = render(&["--set", "agent.enabled=true", "--set", "agent.terminationGracePeriodSeconds=null"]).unwrap_err();
    assert!(unset.contains("agent.terminationGracePeriodSeconds is required"), "{unset}");
    // One of the two set by hand keeps the other's default: refused here, naming both, not by
    // the apiserver; OnDelete drops the rolling settings.
    let both = render(&["--set", "agent.enabled=true", "--set-string", "agent.updateStrategy.rollingUpdate.maxSurge=10%"]).unwrap_err();
    assert!(both.contains("agent.updateStrategy.rollingUpdate") && both.contains("maxSurge (10%)") && both.contains("maxUnavailable (10%)"), "{both}");
    let surge = render(&[
        "--set",
        "agent.enabled=true",
        "--set-string",
        "agent.updateStrategy.rollingUpdate.maxSurge=10%",
        "--set",
        "agent.updateStrategy.rollingUpdate.maxUnavailable=0",
    ])
    .unwrap();
    let rolling = &surge.iter().find(|o| o["kind"] == "DaemonSet").unwrap()["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((rolling["maxSurge"].as_str(), rolling["maxUnavailable"].as_i64()), (Some("10%"), Some(0)));
    let neither = render(&["--set", "agent.enabled=true", "--set", "agent.updateStrategy.rollingUpdate.maxUnavailable=0"]).unwrap_err();
    assert!(neither.contains("exactly one of maxSurge (0) and maxUnavailable (0)"), "{neither}");
    let on_delete = render(&["--set", "agent.enabled=true", "--set", "agent.updateStrategy.type=OnDelete"]).unwrap();
    let strategy = &on_delete.iter().find(|o| o["kind"] == "DaemonSet").unwrap()["spec"]["updateStrategy"];
    assert_eq!(serde_yaml_ng::to_string(strategy).unwrap().trim(), "type: OnDelete");
    // Set to null, the DaemonSet API's own default applies (one node at a time).
    let unset = render(&["--set", "agent.enabled=true", "--set", "agent.updateStrategy=null"]).unwrap();
    assert!(unset.iter().find(|o| o["kind"] == "DaemonSet").unwrap()["spec"]["updateStrategy"].is_null());
    // Nothing that selects the controller's Pods (the Service, a disruption budget) selects an agent.
    let service_selector = &the(&objects, "Service")["spec"]["selector"];
    let agent_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    assert!(
        service_selector.as_mapping().unwrap().iter().any(|(k, v)| &agent_labels[k.as_str().unwrap()] != v),
        "the Service {service_selector:?} selects the agent's Pods {agent_labels:?}"
    );
    assert_eq!(agent_labels["app.kubernetes.io/component"].as_str(), Some("agent"));
    for key in ["helm.sh/chart", "app.kubernetes.io/version"] {
        assert!(agent_labels[key].is_null(), "the agent's Pod template carries {key}: every chart bump would roll every node");
    }

    // Its Lease, and nothing else: the Role; which Lease is the policy's to say.
    let role = named(&objects, "Role", "pulsecheck-agent");
    assert_eq!(role["metadata"]["namespace"].as_str(), Some("pulsecheck"));
    assert_eq!(
        serde_yaml_ng::to_string(&role["rules"]).unwrap().trim(),
        "- apiGroups:\n  - coordination.k8s.io\n  resources:\n  - leases\n  verbs:\n  - get\n  - create\n  - update\n  - delete"
    );
    let binding = named(&objects, "RoleBinding", "pulsecheck-agent");
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("pulsecheck-agent"));
    let policy = the(&objects, "ValidatingAdmissionPolicy");
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"].as_str(), Some("Fail"));
    let matched = spec["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(
        matched.starts_with("request.userInfo.username == 'system:serviceaccount:pulsecheck:pulsecheck-agent' ||")
            && matched.contains(".startsWith('pulsecheck-agent-')"),
        "the agent's requests and everyone's on agent Leases: {matched}"
    );
    let rule = &spec["matchConstraints"]["resourceRules"][0];
    assert_eq!((strings(&rule["apiGroups"]), strings(&rule["resources"])), (vec!["coordination.k8s.io"], vec!["leases"]));
    assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE", "DELETE"]);
    assert_eq!(spec["matchConstraints"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(), Some("pulsecheck"));
    let cel: Vec<&str> = ["variables", "validations"].iter().flat_map(|k| spec[*k].as_sequence().unwrap()).map(|v| v["expression"].as_str().unwrap()).collect();
    let cel = cel.join("\n");
    for says in [
        "authentication.kubernetes.io/node-name",
        "'pulsecheck-agent-' + variables.nodeName",
        "oldObject.metadata.name",
        "object.spec == oldObject.spec",
        "'pulsecheck.dev/agent-report'",
    ] {
        assert!(cel.contains(says), "the policy lacks {says}: {cel}");
    }
    let policy_binding = the(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(policy_binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(strings(&policy_binding["spec"]["validationActions"]), ["Deny"]);
}

#[test]
fn the_kubelet_root_dir_flows_into_the_scratch_dir_the_reports_name() {
    for root in ["/data/kubelet", "/data/kubelet/"] {
        let objects = render(&[
            "--set",
            "agent.enabled=true",
            "--set",
            &format!("agent.kubeletRootDir={root}"),
            "--set",
            "agent.extraArgs={--disk-interval=2s}",
            "--set",
            "agent.nodeSelector.pool=general",
            "--set",
            "agent.priorityClassName=",
        ])
        .unwrap();
        let pod = &the(&objects, "DaemonSet")["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            strings(&container["args"]),
            ["--scratch-dir=/data/kubelet/pods/$(POD_UID)/volumes/kubernetes.io~empty-dir/scratch", "--scratch-mount=/scratch", "--disk-interval=2s"],
            "{root}"
        );
        assert_eq!(container["volumeMounts"][1]["mountPath"].as_str(), Some("/scratch"), "{root}");
        assert_eq!(pod["nodeSelector"]["pool"].as_str(), Some("general"));
        assert!(pod["priorityClassName"].is_null(), "{pod:?}");
        // No critical class, no quota for it.
        assert!(!agent_objects(&objects).iter().any(|o| o.starts_with("ResourceQuota/")), "{:?}", agent_objects(&objects));
    }
    let relative = render(&["--set", "agent.enabled=true", "--set", "agent.kubeletRootDir=var/lib/kubelet"]).unwrap_err();
    assert!(relative.contains("kubeletRootDir"), "{relative}");
    // Another release name: the policy names the ServiceAccount the chart creates.
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "health"])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", "ops", "--set", "agent.enabled=true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect();
    let sa = objects.iter().find(|o| o["kind"].as_str() == Some("ServiceAccount") && label(o, "app.kubernetes.io/component") == Some("agent")).unwrap();
    assert_eq!(sa["metadata"]["name"].as_str(), Some("health-pulsecheck-agent"));
    let policy = &the(&objects, "ValidatingAdmissionPolicy")["spec"];
    let user = "request.userInfo.username == 'system:serviceaccount:ops:health-pulsecheck-agent'";
    assert!(policy["matchConditions"][0]["expression"].as_str().unwrap().starts_with(user), "{policy:?}");
    assert_eq!(policy["variables"][0]["expression"].as_str(), Some(user));
    assert_eq!(the(&objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"], sa["metadata"]["name"]);
}

#[test]
fn the_critical_pods_quota_admits_one_agent_per_node_as_well() {
    let quotas = |args: &[&str]| -> Vec<(String, String, String)> {
        render(args)
            .unwrap()
            .iter()
            .filter(|o| o["kind"].as_str() == Some("ResourceQuota"))
            .map(|q| {
                (
                    q["metadata"]["name"].as_str().unwrap().to_owned(),
                    q["spec"]["scopeSelector"]["matchExpressions"][0]["values"][0].as_str().unwrap().to_owned(),
                    q["spec"]["hard"]["pods"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let quota = |name: &str, class: &str, pods: &str| (name.to_owned(), class.to_owned(), pods.to_owned());
    // Two classes, two quotas.
    assert_eq!(
        quotas(&["--set", "agent.enabled=true"]),
        [quota("pulsecheck-critical-pods", "system-cluster-critical", "2"), quota("pulsecheck-agent-critical-pods", "system-node-critical", "5000")]
    );
    // One class: one quota holding both (a Pod counts against every quota whose scope it is in).
    assert_eq!(
        quotas(&["--set", "agent.enabled=true", "--set", "agent.priorityClassName=system-cluster-critical", "--set", "agent.priorityClassQuotaPods=300"]),
        [quota("pulsecheck-critical-pods", "system-cluster-critical", "302")]
    );
    // The controller without a critical class, the agent with one.
    assert_eq!(
        quotas(&["--set", "agent.enabled=true", "--set", "priorityClassName="]),
        [quota("pulsecheck-agent-critical-pods", "system-node-critical", "5000")]
    );
    assert_eq!(quotas(&["--set", "agent.enabled=true", "--set", "priorityClassQuota=false"]), []);
}

#[test]
fn the_controller_may_watch_the_agents_leases_in_its_own_namespace_whatever_its_leader_election() {
    let lease_roles = |args: &[&str]| -> Vec<(String, String, Vec<String>)> {
        render(args)
            .unwrap()
            .iter()
            .filter(|o| o["kind"].as_str() == Some("Role") && label(o, "app.kubernetes.io/component") == Some("controller"))
            .filter(|o| o["rules"][0]["resources"][0].as_str() == Some("leases") && o["metadata"]["namespace"].as_str() != Some("kube-node-lease"))
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                    o["metadata"]["namespace"].as_str().unwrap().to_owned(),
                    strings(&o["rules"][0]["verbs"]).into_iter().map(str::to_owned).collect(),
                )
            })
            .collect()
    };
    let role = |name: &str, namespace: &str, verbs: &[&str]| (name.to_owned(), namespace.to_owned(), verbs.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    let watched = ["get", "list", "watch", "create", "update"];
    assert_eq!(lease_roles(&[]), [role("pulsecheck-leader-election", "pulsecheck", &watched)]);
    assert_eq!(lease_roles(&["--set", "agent.enabled=true"]), [role("pulsecheck-leader-election", "pulsecheck", &watched)]);
    // Without leader election, or with its Lease elsewhere: a Role of their own.
    assert_eq!(lease_roles(&["--set", "config.leaderElect=false"]), [role("pulsecheck-agent-leases", "pulsecheck", &["get", "list", "watch"])]);
    assert_eq!(
        lease_roles(&["--set", "config.leaderElectionNamespace=elsewhere"]),
        [
            role("pulsecheck-leader-election", "elsewhere", &["get", "create", "update"]),
            role("pulsecheck-agent-leases", "pulsecheck", &["get", "list", "watch"])
        ]
    );
}
