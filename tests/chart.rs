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
