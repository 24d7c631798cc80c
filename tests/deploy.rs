//! The Kubernetes manifests and the StatefulSet entrypoint, checked without kubectl: the YAML
//! parses into the expected objects, the pieces refer to each other consistently (Service ↔
//! StatefulSet, Secret keys, ports, replicas), the ConfigMap's configuration loads, and the
//! entrypoint derives the process index and the hostfile from the pod ordinal.

use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/wrongbook.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("each document parses"))
        .collect()
}

use serde::Deserialize;

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("a {kind}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name}"))
}

#[test]
fn manifests_are_consistent() {
    let docs = manifests();
    let service = of_kind(&docs, "Service");
    let set = of_kind(&docs, "StatefulSet");
    let config_map = of_kind(&docs, "ConfigMap");
    let secret = of_kind(&docs, "Secret");

    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(
        set["spec"]["selector"]["matchLabels"]["app"],
        service["spec"]["selector"]["app"]
    );
    let template = &set["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let container = &template["spec"]["containers"][0];

    // The process count is the replica count; the Service name is the headless Service.
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(env(container, "REPLICAS")["value"], replicas.to_string());
    assert_eq!(
        env(container, "SERVICE")["value"],
        service["metadata"]["name"]
    );
    assert_eq!(
        env(container, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Secrets come from the Secret, by keys it has.
    let secret_keys = secret["stringData"].as_mapping().unwrap();
    for name in ["WRONGBOOK_MYSQL__PASSWORD", "WRONGBOOK_KAFKA__PASSWORD"] {
        let reference = &env(container, name)["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], secret["metadata"]["name"]);
        assert!(secret_keys.contains_key(&reference["key"]), "{name}");
    }
    // Ports: timely's and the metrics port agree across the Service, the pod and the config.
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        env(container, "CLUSTER_PORT")["value"],
        port("timely").to_string()
    );
    assert_eq!(
        annotations["prometheus.io/port"],
        port("metrics").to_string()
    );

    // The configuration loads, with its secrets left to the environment.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrongbook.toml");
    std::fs::write(
        &path,
        config_map["data"]["wrongbook.toml"].as_str().unwrap(),
    )
    .unwrap();
    let config = wrongbook::config::Config::load_with_env(Some(&path), std::iter::empty())
        .expect("the ConfigMap's configuration loads");
    assert!(config
        .metrics
        .listen
        .ends_with(&format!(":{}", port("metrics"))));
    assert!(config.mysql.password.expose().is_empty());
    assert!(config.checkpoint.dir.starts_with(
        template["spec"]["containers"][0]["volumeMounts"][1]["mountPath"]
            .as_str()
            .unwrap()
    ));
}

fn entrypoint(pod: &str, replicas: &str, hostfile: &Path) -> std::process::Output {
    Command::new(root().join("deploy/entrypoint.sh"))
        .env("DRY_RUN", "1")
        .env("POD_NAME", pod)
        .env("REPLICAS", replicas)
        .env("SERVICE", "wrongbook-headless")
        .env("NAMESPACE", "jobs")
        .env("HOSTFILE", hostfile)
        .output()
        .unwrap()
}

#[test]
fn the_entrypoint_derives_the_process_and_hostfile_from_the_pod_ordinal() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = dir.path().join("hosts");
    let out = entrypoint("wrongbook-1", "3", &hostfile);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let command = String::from_utf8_lossy(&out.stdout);
    assert!(
        command.contains(&format!("-n 3 -p 1 -h {}", hostfile.display())),
        "{command}"
    );
    assert!(command.contains("run -c /etc/wrongbook/wrongbook.toml"));
    let hosts = wrongbook::cluster::read_hostfile(&hostfile).unwrap();
    assert_eq!(
        hosts,
        (0..3)
            .map(|i| format!("wrongbook-{i}.wrongbook-headless.jobs.svc.cluster.local:2101"))
            .collect::<Vec<_>>()
    );

    for (pod, replicas) in [
        ("wrongbook", "3"),
        ("wrongbook-3", "3"),
        ("wrongbook-x", "2"),
    ] {
        let out = entrypoint(pod, replicas, &hostfile);
        assert_eq!(out.status.code(), Some(2), "{pod} of {replicas}");
        assert!(!out.stderr.is_empty());
    }
}
