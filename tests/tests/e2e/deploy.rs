//! The deployment examples of `deploy/`: every file parses (YAML with
//! serde_yaml, the engine configurations with sluice's own loader, so they
//! are valid engine configurations), the facts the files depend on across
//! each other hold (ports, grace periods above `shutdown_timeout`, labels
//! and names that must match), and the tools on this machine accept them:
//! `nginx -t` for the nginx example (SKIPPED loudly without nginx, a
//! failure with `SLUICE_REQUIRE_EXTERNAL`), `systemd-analyze verify` for
//! the unit and `envoy --mode validate` for the Envoy configuration where
//! they are installed (neither is a server the tests need: a plain
//! `SKIPPED` line without them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;
use sluice_config::{Settings, SinkSpec};
use sluice_tests::*;

/// A file of `deploy/`.
fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// The one YAML document of `text` (`what` names it in failures; more
/// than one document is an error of serde_yaml's).
fn yaml(what: &str, text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what}: not one YAML document: {e}"))
}

/// The value at `path` in `v`: keys and list indexes separated by `.`; a
/// key that holds dots in brackets (`data.[sluice.toml]`).
#[track_caller]
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut keys = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let (key, next) = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').expect("a closing bracket"),
            None => rest
                .split_once('.')
                .map_or((rest, ""), |(k, _)| (k, &rest[k.len()..])),
        };
        keys.push(key);
        rest = next.strip_prefix('.').unwrap_or(next);
    }
    let mut cur = v;
    for key in keys {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("no {path} (at {key:?}) in {v:?}"));
    }
    cur
}

#[track_caller]
fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

#[track_caller]
fn n(v: &Value, path: &str) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number"))
}

/// `"3600s"`, as Envoy writes durations.
fn envoy_duration(v: &Value, path: &str) -> Duration {
    let text = s(v, path);
    let secs = text.strip_suffix('s').and_then(|t| t.parse::<u64>().ok());
    Duration::from_secs(secs.unwrap_or_else(|| panic!("{path}: {text:?} is not <n>s")))
}

/// Kubernetes memory quantities (`512Mi`, `1Gi`), in bytes.
fn quantity(text: &str) -> u64 {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let factor = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other:?} of {text:?}"),
    };
    num.parse::<u64>().expect("a quantity") * factor
}

/// Loads the engine configuration `text` with sluice's own loader (the
/// defaults, the file, then `env`, as `sluice serve` would), each secret
/// file it names replaced by a temporary file (the loader checks that a
/// secret can be read). Also the names of those secret files, by key.
fn load_engine(text: &str, env: &[(String, String)]) -> (Settings, BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let raw: toml::Table = toml::from_str(text).expect("TOML");
    let mut secrets = BTreeMap::new();
    let mut env = env.to_vec();
    let pipelines = raw.get("pipelines").and_then(|p| p.as_array());
    for (i, p) in pipelines.into_iter().flatten().enumerate() {
        for sink in ["sink", "dead_letter"] {
            for key in ["token_file", "password_file"] {
                let path = p
                    .get(sink)
                    .and_then(|s| s.get(key))
                    .and_then(|v| v.as_str());
                if let Some(path) = path {
                    secrets.insert(format!("pipelines.{i}.{sink}.{key}"), path.to_owned());
                    let stand_in = dir.path().join(format!("{i}-{sink}-{key}"));
                    std::fs::write(&stand_in, "secret\n").unwrap();
                    let var = format!("SLUICE__PIPELINES__{i}__{}__{}", sink, key).to_uppercase();
                    env.push((var, stand_in.display().to_string()));
                }
            }
        }
    }
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, text).unwrap();
    let settings = Settings::load_with_env(Some(&file), env)
        .unwrap_or_else(|e| panic!("not a valid engine configuration: {e}\n{text}"));
    (settings, secrets)
}

/// Every manifest of `deploy/kubernetes/`, by file name.
fn manifests() -> BTreeMap<String, Value> {
    let dir = deploy("kubernetes");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "deploy/kubernetes/{name}: only manifests here"
        );
        let v = yaml(&name, &std::fs::read_to_string(&path).unwrap());
        for key in ["apiVersion", "kind", "metadata.name"] {
            s(&v, key);
        }
        out.insert(name, v);
    }
    out
}

/// The container named `name` of a Deployment.
#[track_caller]
fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    let containers = at(deployment, "spec.template.spec.containers");
    (containers.as_sequence().expect("containers").iter())
        .find(|c| s(c, "name") == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The port number of the container port named `name`.
#[track_caller]
fn container_port(c: &Value, name: &str) -> u64 {
    let ports = at(c, "ports").as_sequence().expect("ports");
    let port = ports.iter().find(|p| s(p, "name") == name);
    n(
        port.unwrap_or_else(|| panic!("no port {name}")),
        "containerPort",
    )
}

/// Where the volume of `source` (`configMap` or `secret`) named `name`
/// (its `name` / `secretName`) is mounted in container `c`.
#[track_caller]
fn mount_of(deployment: &Value, c: &Value, source: &str, name: &str) -> String {
    let key = if source == "secret" {
        "secretName"
    } else {
        "name"
    };
    let volumes = at(deployment, "spec.template.spec.volumes");
    let volume = (volumes.as_sequence().expect("volumes").iter())
        .find(|v| v.get(source).is_some_and(|src| s(src, key) == name))
        .unwrap_or_else(|| panic!("no {source} volume of {name}"));
    let mounts = at(c, "volumeMounts").as_sequence().expect("volumeMounts");
    let mount = mounts.iter().find(|m| s(m, "name") == s(volume, "name"));
    s(mount.expect("the volume is mounted"), "mountPath").to_owned()
}

#[test]
fn the_kubernetes_example_parses_and_its_files_agree() {
    let m = manifests();
    let kinds: Vec<(&str, &str)> = (m.iter())
        .map(|(f, v)| (f.as_str(), s(v, "kind")))
        .collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(
            kinds.iter().any(|(_, k)| *k == kind),
            "no {kind}: {kinds:?}"
        );
    }
    let config_map = &m["sluice-configmap.yaml"];
    let deployment = &m["sluice-deployment.yaml"];
    let service = &m["sluice-service.yaml"];
    let (settings, secrets) = load_engine(s(config_map, "data.[sluice.toml]"), &[]);
    let port = u64::from(settings.server.listen.port());
    assert!(
        settings.server.listen.ip().is_unspecified(),
        "a pod's engine listens on every interface"
    );

    // The engine's container: its ports, probes, grace, config and secret.
    let c = container(deployment, "sluice");
    assert_eq!(container_port(c, "grpc"), port);
    assert_eq!(
        container_port(c, "metrics"),
        u64::from(settings.metrics.listen.port())
    );
    let annotation = s(
        deployment,
        "spec.template.metadata.annotations.[prometheus.io/port]",
    );
    assert_eq!(annotation, settings.metrics.listen.port().to_string());
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            n(c, &format!("{probe}.grpc.port")),
            port,
            "{probe} on gRPC health"
        );
    }
    let shutdown = settings.server.shutdown_timeout.as_secs();
    let grace = n(
        deployment,
        "spec.template.spec.terminationGracePeriodSeconds",
    );
    assert!(
        grace > shutdown,
        "grace {grace}s > shutdown_timeout {shutdown}s"
    );
    let liveness = n(c, "livenessProbe.periodSeconds") * n(c, "livenessProbe.failureThreshold");
    assert!(
        liveness > shutdown,
        "liveness ({liveness}s to fail) must outlast a drain ({shutdown}s of NOT_SERVING)"
    );
    let config_dir = mount_of(deployment, c, "configMap", s(config_map, "metadata.name"));
    let args: Vec<&str> = (at(c, "args").as_sequence().unwrap().iter())
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", &format!("{config_dir}/sluice.toml")]
    );
    let secret_dir = mount_of(deployment, c, "secret", "sluice-nats");
    assert!(!secrets.is_empty(), "the NATS token comes from a file");
    for (key, path) in &secrets {
        assert_eq!(
            Path::new(path).parent(),
            Some(Path::new(&secret_dir)),
            "{key} = {path}: in the mounted Secret"
        );
    }
    let memory = quantity(s(c, "resources.limits.memory"));
    assert!(settings.memory.enabled, "the memory gate watches the limit");
    assert!(
        memory > 2 * settings.buffer.global.bytes,
        "memory limit {memory} leaves room above buffer.global.bytes {}",
        settings.buffer.global.bytes
    );
    s(c, "resources.requests.cpu"); // the autoscaler's 100%

    // The Service, budget and autoscaler select these pods.
    let labels = at(deployment, "spec.template.metadata.labels");
    assert_eq!(at(deployment, "spec.selector.matchLabels"), labels);
    assert_eq!(at(service, "spec.selector"), labels);
    assert_eq!(
        s(service, "spec.clusterIP"),
        "None",
        "headless: per-pod DNS"
    );
    assert_eq!(n(service, "spec.ports.0.port"), port);
    assert_eq!(s(service, "spec.ports.0.targetPort"), "grpc");
    let pdb = &m["sluice-pdb.yaml"];
    assert_eq!(at(pdb, "spec.selector.matchLabels"), labels);
    let hpa = &m["sluice-hpa.yaml"];
    assert_eq!(s(hpa, "spec.scaleTargetRef.kind"), "Deployment");
    assert_eq!(
        s(hpa, "spec.scaleTargetRef.name"),
        s(deployment, "metadata.name")
    );
    assert_eq!(s(hpa, "spec.metrics.0.resource.name"), "cpu");
    let min = n(hpa, "spec.minReplicas");
    assert!(
        n(pdb, "spec.maxUnavailable") < min,
        "the budget leaves replicas up"
    );
    assert!(n(hpa, "spec.maxReplicas") >= min);

    // Envoy: per-stream HTTP/2 balancing over the headless Service, gRPC
    // health checks, no timeout that ends a long-lived stream.
    let envoy_map = &m["envoy-configmap.yaml"];
    let envoy = yaml("envoy.yaml", s(envoy_map, "data.[envoy.yaml]"));
    let listener = at(&envoy, "static_resources.listeners.0");
    let envoy_deployment = &m["envoy-deployment.yaml"];
    let ec = container(envoy_deployment, "envoy");
    let lb_port = n(listener, "address.socket_address.port_value");
    assert_eq!(container_port(ec, "grpc"), lb_port);
    let lb_service = &m["envoy-service.yaml"];
    assert_eq!(
        at(lb_service, "spec.selector"),
        at(envoy_deployment, "spec.template.metadata.labels")
    );
    assert_eq!(s(lb_service, "spec.ports.0.targetPort"), "grpc");
    let envoy_dir = mount_of(
        envoy_deployment,
        ec,
        "configMap",
        s(envoy_map, "metadata.name"),
    );
    assert_eq!(s(ec, "args.0"), "-c");
    assert_eq!(s(ec, "args.1"), format!("{envoy_dir}/envoy.yaml"));
    let hcm = at(listener, "filter_chains.0.filters.0.typed_config");
    assert_eq!(s(hcm, "codec_type"), "HTTP2");
    assert_eq!(s(hcm, "request_timeout"), "0s");
    let keepalive = settings.server.keepalive_interval + settings.server.keepalive_timeout;
    for idle in [
        "stream_idle_timeout",
        "common_http_protocol_options.idle_timeout",
    ] {
        assert!(
            envoy_duration(hcm, idle) > 10 * keepalive,
            "{idle} far above the keepalive"
        );
    }
    let route = at(hcm, "route_config.virtual_hosts.0.routes.0.route");
    let cluster = at(&envoy, "static_resources.clusters.0");
    assert_eq!(s(route, "cluster"), s(cluster, "name"));
    assert_eq!(s(route, "timeout"), "0s", "no route timeout on streams");
    assert_eq!(s(cluster, "type"), "STRICT_DNS");
    let endpoint = at(
        cluster,
        "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address",
    );
    assert_eq!(
        s(endpoint, "address"),
        format!("{}.default.svc.cluster.local", s(service, "metadata.name"))
    );
    assert_eq!(n(endpoint, "port_value"), port);
    let upstream = at(
        cluster,
        "typed_extension_protocol_options.[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]",
    );
    at(upstream, "explicit_http_config.http2_protocol_options");
    assert!(envoy_duration(upstream, "common_http_protocol_options.idle_timeout") > 10 * keepalive);
    at(cluster, "health_checks.0.grpc_health_check");
    assert!(
        n(cluster, "circuit_breakers.thresholds.0.max_requests") >= 10_000,
        "every stream is a request"
    );
    validate_envoy(s(envoy_map, "data.[envoy.yaml]"));
}

/// `envoy --mode validate` on the configuration, where Envoy is installed.
fn validate_envoy(config: &str) {
    let Some(envoy) = which("envoy") else {
        eprintln!("SKIPPED envoy --mode validate: `envoy` is not installed (the YAML checks ran)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("envoy runs");
    assert!(
        out.status.success(),
        "envoy --mode validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A program on `PATH`, without the SKIPPED line of [`external_program`].
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A systemd unit: `(section, key) -> values` (a key may repeat).
fn unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        out.entry((section.clone(), key.to_owned()))
            .or_default()
            .push(value.to_owned());
    }
    out
}

/// The directive lines (trimmed, comments dropped) of the first
/// `<block> {` … `}` block of an nginx configuration, nested blocks' lines
/// included.
fn nginx_block(config: &str, block: &str) -> Vec<String> {
    let mut lines = config.lines().map(str::trim);
    let start = format!("{block} {{");
    lines.by_ref().find(|l| *l == start).expect("the block");
    let mut depth = 1;
    let mut out = Vec::new();
    for line in lines {
        depth += line.matches('{').count();
        depth -= line.matches('}').count();
        if depth == 0 {
            break;
        }
        if !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_owned());
        }
    }
    out
}

#[test]
fn the_single_host_example_parses_and_its_files_agree() {
    let text = read("single-host/sluice@.service");
    let u = unit(&text);
    let one = |section: &str, key: &str| -> &str {
        let v = u.get(&(section.into(), key.into()));
        match v.map(Vec::as_slice) {
            Some([one]) => one,
            other => panic!("[{section}] {key}: {other:?}"),
        }
    };
    let exec: Vec<&str> = one("Service", "ExecStart").split_whitespace().collect();
    assert_eq!(exec[1..], ["serve", "--config", "/etc/sluice/sluice.toml"]);
    let state_dir = format!("/var/lib/{}", one("Service", "StateDirectory"));
    let config = read("single-host/sluice.toml");
    let upstreams: Vec<String> =
        nginx_block(&read("single-host/nginx-sluice.conf"), "upstream sluice");
    assert_eq!(upstreams.len(), 3, "three engines behind nginx");
    for (i, upstream) in (1..=3).zip(&upstreams) {
        // Instance i's environment, as systemd fills in `%i`.
        let env: Vec<(String, String)> = u[&("Service".into(), "Environment".into())]
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("NAME=value");
                (k.to_owned(), v.replace("%i", &i.to_string()))
            })
            .collect();
        let (settings, secrets) = load_engine(&config, &env);
        let listen: SocketAddr = format!("127.0.0.1:5005{i}").parse().unwrap();
        assert_eq!(settings.server.listen, listen, "instance {i}");
        assert_eq!(settings.metrics.listen.port(), 9090 + i);
        assert_eq!(
            upstream,
            &format!("server {listen} max_fails=1 fail_timeout=2s;"),
            "nginx's upstream {i} is instance {i}"
        );
        let SinkSpec::File { dir, .. } = &settings.pipelines[0].dead_letter else {
            panic!("dead letters to files on a single host");
        };
        let state = state_dir.replace("%i", &i.to_string());
        assert!(dir.starts_with(&state), "{} in {state}", dir.display());
        assert!(!secrets.is_empty(), "the NATS token comes from a file");
        let stop = one("Service", "TimeoutStopSec").parse::<u64>().unwrap();
        let shutdown = settings.server.shutdown_timeout.as_secs();
        assert!(
            stop > shutdown,
            "TimeoutStopSec {stop} > shutdown_timeout {shutdown}"
        );
    }
    assert_eq!(one("Service", "KillSignal"), "SIGTERM");
    verify_unit(&text);

    // The server block is the tested one (tests/src/nginx.rs) but for the
    // address it listens on.
    let port = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let tested = nginx_config(port(50050), &[port(50051)], Path::new("/tmp"));
    let ours = nginx_block(&read("single-host/nginx-sluice.conf"), "server");
    let theirs = nginx_block(&tested, "server");
    let not_listen = |l: &&String| !l.starts_with("listen ");
    assert_eq!(
        ours.iter().filter(not_listen).collect::<Vec<_>>(),
        theirs.iter().filter(not_listen).collect::<Vec<_>>()
    );
    nginx_t();
}

/// `nginx -t` on the example, included in the `http` block of a minimal
/// main configuration whose files are in a temporary directory (as
/// Debian's nginx.conf includes `conf.d/*.conf`).
fn nginx_t() {
    let Some(nginx) = external_program("deploy::nginx_t", "nginx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    \
         client_body_temp_path {d}/cb;\n    proxy_temp_path {d}/p;\n    fastcgi_temp_path {d}/f;\n    \
         uwsgi_temp_path {d}/u;\n    scgi_temp_path {d}/s;\n    access_log off;\n    include {};\n}}\n",
        deploy("single-host/nginx-sluice.conf").display()
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let out = nginx_command(&nginx, dir.path(), &conf)
        .arg("-t")
        .output()
        .expect("nginx -t runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t: {stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
}

/// `systemd-analyze verify` on instance 1 of the unit, where systemd is
/// installed; its `sluice` binary stood in for by an executable that
/// exists here (the check that it is executable is all it needs of it).
fn verify_unit(text: &str) {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED systemd-analyze verify: not installed (the unit's checks ran)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let text = text.replace("/usr/local/bin/sluice", &exe.display().to_string());
    std::fs::write(dir.path().join("sluice@.service"), text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("sluice@1.service"))
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are warnings with a zero exit: none may be printed.
    assert!(
        out.status.success() && !stderr.contains("sluice@"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The sizing script of `deploy/` is valid bash (it is run by hand; its
/// figures are in BENCHMARKS.md).
#[test]
fn the_per_core_script_is_valid_bash() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(deploy("measure-per-core.sh"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
