//! The node agent may write only its own node's Lease, and the chart's ValidatingAdmissionPolicy
//! is what says so: the agent's ServiceAccount, Role, RoleBinding, policy and binding rendered by
//! `helm template --set agent.enabled=true` are applied to a real kube-apiserver, a Pod of that
//! ServiceAccount is put on node `n1` (no kubelet: it never runs), and a token bound to that Pod
//! by TokenRequest — what the kubelet mounts into the agent's Pod — is used with kube's client as
//! the agent would. RBAC alone would let that token write every Lease in the namespace; every
//! refusal below that is not a delete comes from the policy, and each test fails without it.
//! The policy also holds everyone else — the cluster's admin included — to what pulsecheck may
//! believe: nobody but a node's agent says what that node's agent Lease reports.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{eventually, repo, tool};
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec},
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Container, Namespace, Node, Pod, PodSpec, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use pulsecheck_lab::controlplane::{ControlPlane, ControlPlaneOptions};

const NAMESPACE: &str = "pulsecheck";
const AGENT: &str = "pulsecheck-agent";
/// How a denial by the chart's policy begins (the apiserver names policy and binding).
const DENIED_BY_POLICY: &str = "ValidatingAdmissionPolicy 'pulsecheck-agent' with binding 'pulsecheck-agent' denied request";

/// The agent's objects from the chart: everything of `templates/agent.yaml` and
/// `templates/agent-admission.yaml` but the DaemonSet (no controller here would run it).
fn chart_agent_objects() -> String {
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "pulsecheck"])
        .arg(repo().join("charts/pulsecheck"))
        .args(["--namespace", NAMESPACE, "--set", "agent.enabled=true"])
        .args(["--show-only", "templates/agent.yaml", "--show-only", "templates/agent-admission.yaml"])
        .output()
        .expect("helm runs");
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let mut kept = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let object = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).expect("helm renders YAML");
        if !object.is_null() && object["kind"].as_str() != Some("DaemonSet") {
            kept.push(serde_yaml_ng::to_string(&object).expect("YAML"));
        }
    }
    let kinds: Vec<&str> = kept.iter().filter_map(|d| d.lines().find_map(|l| l.strip_prefix("kind: "))).collect();
    assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"], "{text}");
    kept.join("---\n")
}

/// `kubectl apply -f -` of `objects` as the admin.
fn kubectl_apply(cp: &ControlPlane, objects: &str) {
    let mut child = std::process::Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["apply", "--validate=strict", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), objects.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply failed:\n{}{}\n{objects}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), ..Default::default() }
}

/// A Lease as the agent writes it: labelled, held by its Pod, owned by it.
fn agent_lease(name: &str, pod: &Pod) -> Lease {
    let labels =
        BTreeMap::from([("app.kubernetes.io/name".to_owned(), "pulsecheck".to_owned()), ("app.kubernetes.io/component".to_owned(), "agent".to_owned())]);
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.metadata.name.clone().unwrap(),
        uid: pod.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    Lease {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), owner_references: Some(vec![owner]), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: pod.metadata.name.clone(),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// A real apiserver with the chart's agent objects, Nodes `n1` and `n2`, the leader Lease
/// `pulsecheck`, and the agent's Pods on `n1` (`pod`) and `n2` (`pod2`).
struct Cluster {
    cp: ControlPlane,
    admin: kube::Client,
    pod: Pod,
    pod2: Pod,
}

impl Cluster {
    async fn start() -> Cluster {
        common::init();
        let cp = ControlPlane::start(ControlPlaneOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let admin = cp.client();
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        namespaces.create(&PostParams::default(), &Namespace { metadata: meta(NAMESPACE), ..Default::default() }).await.unwrap();
        kubectl_apply(&cp, &chart_agent_objects());
        let nodes: Api<Node> = Api::all(admin.clone());
        for node in ["n1", "n2"] {
            nodes.create(&PostParams::default(), &Node { metadata: meta(node), ..Default::default() }).await.unwrap();
        }
        let leases: Api<Lease> = Api::namespaced(admin.clone(), NAMESPACE);
        let leader = Lease { metadata: meta("pulsecheck"), spec: Some(LeaseSpec { holder_identity: Some("pulsecheck-0".into()), ..Default::default() }) };
        leases.create(&PostParams::default(), &leader).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
        let agent_pod = |name: &str, node: &str| Pod {
            metadata: meta(name),
            spec: Some(PodSpec {
                service_account_name: Some(AGENT.into()),
                node_name: Some(node.into()),
                containers: vec![Container { name: "agent".into(), image: Some("ghcr.io/pulsecheck/pulsecheck:0.1.0".into()), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pods.create(&PostParams::default(), &agent_pod("pulsecheck-agent-x1y2z", "n1")).await.unwrap();
        let pod2 = pods.create(&PostParams::default(), &agent_pod("pulsecheck-agent-a3b4c", "n2")).await.unwrap();
        Cluster { cp, admin, pod, pod2 }
    }

    /// Node `n2`'s Lease, as its own agent creates it: nobody else may (the last test).
    async fn lease_of_n2(&self) -> Lease {
        let agent = self.client(&self.token(Some(&self.pod2)).await).await;
        Api::<Lease>::namespaced(agent, NAMESPACE)
            .create(&PostParams::default(), &agent_lease("pulsecheck-agent-n2", &self.pod2))
            .await
            .expect("n2's agent creates n2's Lease")
    }

    /// A token of the agent's ServiceAccount by TokenRequest: bound to `pod`, as the kubelet
    /// mounts it into the agent's Pod, or (None) bound to nothing.
    async fn token(&self, pod: Option<&Pod>) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), NAMESPACE);
        let bound_object_ref = pod.map(|pod| BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        });
        let request = TokenRequest { spec: TokenRequestSpec { bound_object_ref, expiration_seconds: Some(3600), ..Default::default() }, ..Default::default() };
        let response = accounts.create_token_request(AGENT, &PostParams::default(), &request).await.unwrap();
        response.status.map(|s| s.token).filter(|t| !t.is_empty()).expect("a token")
    }

    /// A client with `token`: kube's, as pulsecheck and its agent build it.
    async fn client(&self, token: &str) -> kube::Client {
        self.cp.client_with_token(token).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The agent of node `n1`'s client, once the policy is in force (the apiserver loads a new
    /// policy and binding within a second or so: until then a dry run of a write the policy
    /// refuses goes through).
    async fn agent_of_n1(&self) -> kube::Client {
        let agent = self.client(&self.token(Some(&self.pod)).await).await;
        let leases: Api<Lease> = Api::namespaced(agent.clone(), NAMESPACE);
        let dry_run = PostParams { dry_run: true, ..Default::default() };
        let probe = agent_lease("pulsecheck-agent-n2", &self.pod);
        eventually("the agent policy in force", Duration::from_secs(30), || {
            let (leases, dry_run, probe) = (leases.clone(), dry_run.clone(), probe.clone());
            async move { policy_denial(leases.create(&dry_run, &probe).await).map(|_| ()) }
        })
        .await;
        agent
    }

    async fn stop(self) {
        self.cp.stop().await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The message of a refusal by the chart's policy, or `None` for anything else (success, RBAC's
/// refusal, another error).
fn policy_denial<T>(result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains(DENIED_BY_POLICY) => Some(status.message.clone()),
        _ => None,
    }
}

/// Asserts `result` is the policy's refusal and its message says `says`.
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, says: &str) {
    let shown = format!("{result:?}");
    match policy_denial(result) {
        Some(message) => assert!(message.contains(says), "{what}: refused, but the message does not say {says:?}: {message}"),
        None => panic!("{what}: not refused by the agent policy: {shown}"),
    }
}

/// Asserts `result` is RBAC's refusal (403, `cannot VERB resource "leases"`), not the policy's.
#[track_caller]
fn assert_forbidden_by_rbac<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, verb: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains(&format!("cannot {verb} resource \"leases\"")) => {}
        other => panic!("{what}: not refused by RBAC: {other:?}"),
    }
}

#[tokio::test]
async fn the_agent_s_pod_token_names_its_node_and_writes_that_node_s_lease_and_no_other() {
    let cluster = Cluster::start().await;
    let agent = cluster.agent_of_n1().await;

    // The token the kubelet would mount names the Pod's node: what the policy reads.
    let review = Api::<SelfSubjectReview>::all(agent.clone()).create(&PostParams::default(), &SelfSubjectReview::default()).await.unwrap();
    let user = review.status.and_then(|s| s.user_info).expect("the review says who");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:pulsecheck:pulsecheck-agent"));
    let extra = user.extra.unwrap_or_default();
    assert_eq!(extra.get("authentication.kubernetes.io/node-name"), Some(&vec!["n1".to_owned()]), "{extra:?}");
    assert_eq!(extra.get("authentication.kubernetes.io/pod-name"), Some(&vec![cluster.pod.metadata.name.clone().unwrap()]), "{extra:?}");

    // Its own Lease: created, read and renewed.
    let leases: Api<Lease> = Api::namespaced(agent.clone(), NAMESPACE);
    let own = leases.create(&PostParams::default(), &agent_lease("pulsecheck-agent-n1", &cluster.pod)).await.expect("the agent creates its node's Lease");
    let mut renewed = leases.get("pulsecheck-agent-n1").await.expect("and reads it");
    assert_eq!(renewed.metadata.uid, own.metadata.uid);
    renewed.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    leases.replace("pulsecheck-agent-n1", &PostParams::default(), &renewed).await.expect("the agent renews its node's Lease");

    // Another node's Lease: neither created nor, once it exists, updated.
    assert_denied(
        "creating n2's Lease",
        leases.create(&PostParams::default(), &agent_lease("pulsecheck-agent-n2", &cluster.pod)).await,
        "the pulsecheck-agent of node n1 may write only the Lease pulsecheck-agent-n1, not pulsecheck-agent-n2",
    );
    let admin_leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    let theirs = cluster.lease_of_n2().await;
    let mut forged = theirs.clone();
    forged.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    assert_denied("updating n2's Lease", leases.replace("pulsecheck-agent-n2", &PostParams::default(), &forged).await, "not pulsecheck-agent-n2");
    // Nor the controller's leader Lease, nor a Lease of any other name.
    let mut leader = leases.get("pulsecheck").await.expect("get is the Role's");
    leader.spec.as_mut().unwrap().holder_identity = Some("pulsecheck-agent-x1y2z".into());
    assert_denied("taking the leader Lease", leases.replace("pulsecheck", &PostParams::default(), &leader).await, "not pulsecheck");
    assert_denied(
        "creating a Lease of another name",
        leases.create(&PostParams::default(), &agent_lease("pulsecheck-agent-n1-extra", &cluster.pod)).await,
        "not pulsecheck-agent-n1-extra",
    );
    // Its Role grants delete (OwnerReferencesPermissionEnforcement asks it of an owner
    // change), which the policy confines to its own node's Lease, as every other write.
    assert_denied("deleting n2's Lease", leases.delete("pulsecheck-agent-n2", &DeleteParams::default()).await, "not pulsecheck-agent-n2");
    assert_denied("deleting the leader Lease", leases.delete("pulsecheck", &DeleteParams::default()).await, "not pulsecheck");
    // Nothing beyond its own Lease's name: no list (nor watch) of the namespace's Leases.
    assert_forbidden_by_rbac("listing Leases", leases.list(&kube::api::ListParams::default()).await, "list");
    // What was refused changed nothing.
    assert_eq!(admin_leases.get("pulsecheck-agent-n2").await.unwrap().metadata.resource_version, theirs.metadata.resource_version);
    assert_eq!(admin_leases.get("pulsecheck").await.unwrap().spec.unwrap().holder_identity.as_deref(), Some("pulsecheck-0"));
    assert!(admin_leases.get_opt("pulsecheck-agent-n1-extra").await.unwrap().is_none());
    cluster.stop().await;
}

#[tokio::test]
async fn a_role_widened_to_delete_still_lets_no_agent_delete_another_node_s_lease() {
    let cluster = Cluster::start().await;
    let agent = cluster.agent_of_n1().await;
    // Someone grants the agent delete again (a Role of their own, bound to its ServiceAccount;
    // the chart's Role grants it too).
    let roles: Api<Role> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    let rule = PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        verbs: vec!["delete".into()],
        ..Default::default()
    };
    roles.create(&PostParams::default(), &Role { metadata: meta("widened"), rules: Some(vec![rule]) }).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    let binding = RoleBinding {
        metadata: meta("widened"),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: "widened".into() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name: AGENT.into(), namespace: Some(NAMESPACE.into()), ..Default::default() }]),
    };
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let admin_leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    cluster.lease_of_n2().await;
    let leases: Api<Lease> = Api::namespaced(agent, NAMESPACE);
    leases.create(&PostParams::default(), &agent_lease("pulsecheck-agent-n1", &cluster.pod)).await.unwrap();
    // RBAC now allows the delete (checked first, or the denials below could be RBAC's).
    eventually("the widened Role in force", Duration::from_secs(10), || {
        let leases = leases.clone();
        async move { leases.delete("pulsecheck-agent-n1", &DeleteParams { dry_run: true, ..Default::default() }).await.ok().map(|_| ()) }
    })
    .await;
    // The policy judges the Lease deleted (its old object): another node's, the leader's, no.
    assert_denied("deleting n2's Lease", leases.delete("pulsecheck-agent-n2", &DeleteParams::default()).await, "not pulsecheck-agent-n2");
    assert_denied("deleting the leader Lease", leases.delete("pulsecheck", &DeleteParams::default()).await, "not pulsecheck");
    assert!(admin_leases.get_opt("pulsecheck-agent-n2").await.unwrap().is_some() && admin_leases.get_opt("pulsecheck").await.unwrap().is_some());
    // Its own: the policy has nothing against it.
    leases.delete("pulsecheck-agent-n1", &DeleteParams::default()).await.expect("with delete granted, the agent may delete its own node's Lease");
    cluster.stop().await;
}

#[tokio::test]
async fn a_token_of_the_agent_s_service_account_bound_to_no_pod_writes_no_lease() {
    let cluster = Cluster::start().await;
    cluster.agent_of_n1().await;
    // A plain TokenRequest (what `kubectl create token pulsecheck-agent` gives): the same
    // ServiceAccount, the same RBAC, but no Pod and so no node.
    let unbound = cluster.client(&cluster.token(None).await).await;
    let review = Api::<SelfSubjectReview>::all(unbound.clone()).create(&PostParams::default(), &SelfSubjectReview::default()).await.unwrap();
    let user = review.status.and_then(|s| s.user_info).expect("the review says who");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:pulsecheck:pulsecheck-agent"));
    assert!(!user.extra.unwrap_or_default().contains_key("authentication.kubernetes.io/node-name"));

    let admin_leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    let existing = cluster.lease_of_n2().await;
    let leases: Api<Lease> = Api::namespaced(unbound, NAMESPACE);
    let no_node = "this token names no node, so it may not write the Lease";
    for name in ["pulsecheck-agent-n1", "pulsecheck-agent-anything", "pulsecheck"] {
        assert_denied(&format!("creating {name}"), leases.create(&PostParams::default(), &agent_lease(name, &cluster.pod)).await, &format!("{no_node} {name}"));
    }
    let mut forged = leases.get("pulsecheck-agent-n2").await.expect("get is the Role's");
    forged.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    assert_denied("updating n2's Lease", leases.replace("pulsecheck-agent-n2", &PostParams::default(), &forged).await, no_node);
    let leader = leases.get("pulsecheck").await.unwrap();
    assert_denied("updating the leader Lease", leases.replace("pulsecheck", &PostParams::default(), &leader).await, no_node);
    assert_eq!(admin_leases.get("pulsecheck-agent-n2").await.unwrap().metadata.resource_version, existing.metadata.resource_version);
    assert!(admin_leases.get_opt("pulsecheck-agent-n1").await.unwrap().is_none());
    cluster.stop().await;
}

#[tokio::test]
async fn nobody_but_the_node_s_agent_creates_an_agent_lease_or_changes_what_it_reports() {
    let cluster = Cluster::start().await;
    cluster.agent_of_n1().await;
    // The cluster's admin (system:masters: RBAC allows everything) stands for anyone who may
    // write Leases in pulsecheck's namespace — pulsecheck's own ServiceAccount creates its
    // leader Lease there.
    let admin_leases: Api<Lease> = Api::namespaced(cluster.admin.clone(), NAMESPACE);
    let only_its_agent = "only the pulsecheck-agent of its node may create the Lease";
    assert_denied(
        "the admin creating an agent Lease for n1",
        admin_leases.create(&PostParams::default(), &agent_lease("pulsecheck-agent-n1", &cluster.pod)).await,
        &format!("{only_its_agent} pulsecheck-agent-n1"),
    );
    assert!(admin_leases.get_opt("pulsecheck-agent-n1").await.unwrap().is_none());

    let lease = cluster.lease_of_n2().await;
    // A forged report ("hung"), a forged renewal, another holder: refused.
    let mut hung = lease.clone();
    hung.metadata.annotations = Some(BTreeMap::from([(
        "pulsecheck.dev/agent-report".to_owned(),
        r#"{"disk":{"state":"hung","path":"/etc/os-release","operation":"read","forSeconds":600},"terminating":false}"#.to_owned(),
    )]));
    assert_denied(
        "the admin writing a hung report",
        admin_leases.replace("pulsecheck-agent-n2", &PostParams::default(), &hung).await,
        "agent-report annotation",
    );
    let mut renewed = lease.clone();
    renewed.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    assert_denied("the admin renewing it", admin_leases.replace("pulsecheck-agent-n2", &PostParams::default(), &renewed).await, "change its spec");
    let mut taken = lease.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("someone".into());
    assert_denied(
        "the admin taking it",
        admin_leases.replace("pulsecheck-agent-n2", &PostParams::default(), &taken).await,
        "may delete it or change its other metadata",
    );
    assert_eq!(admin_leases.get("pulsecheck-agent-n2").await.unwrap().metadata.resource_version, lease.metadata.resource_version, "nothing refused changed it");

    // Its other metadata (a label, the ownerReferences the garbage collector edits) may change,
    // and it may be deleted: neither makes pulsecheck believe anything.
    let mut relabelled = lease.clone();
    relabelled.metadata.labels.as_mut().unwrap().insert("team".into(), "storage".into());
    relabelled.metadata.owner_references = None;
    let relabelled = admin_leases.replace("pulsecheck-agent-n2", &PostParams::default(), &relabelled).await.expect("metadata other than the report may change");
    assert_eq!(relabelled.metadata.labels.unwrap().get("team").map(String::as_str), Some("storage"));
    admin_leases.delete("pulsecheck-agent-n2", &DeleteParams::default()).await.expect("anyone allowed to may delete an agent Lease");
    // Leases of other names are not the policy's: the leader Lease, any other.
    let mut leader = admin_leases.get("pulsecheck").await.unwrap();
    leader.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::now()));
    admin_leases.replace("pulsecheck", &PostParams::default(), &leader).await.expect("the leader Lease is not judged");
    admin_leases.create(&PostParams::default(), &agent_lease("other-agent-n1", &cluster.pod)).await.expect("a Lease of another name is not judged");
    cluster.stop().await;
}
